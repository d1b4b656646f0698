// The one place that picks the libfuse API version and includes libfuse.
// Every fusedev file that needs FUSE includes this header instead of
// <fuse_lowlevel.h>, so the version cannot differ between translation units.
//
// 35 is the newest API level libfuse 3.14 understands; nothing here uses
// an API newer than 3.10 (the minimum meson accepts).
#pragma once

#define FUSE_USE_VERSION 35
#include <fuse_lowlevel.h>
