// forward: build and apply in one call and, on torch's pool, one parallel region.
#pragma once

#include "apply.h"
#include "build.h"

namespace camdrop {

// Steps 1-8 for checked views (a.x, a.y and the build's views v): every check, then one region
// on the pool (build, a barrier, the scales, a barrier, apply). 0, or -1 with an error recorded.
int forward_views(ApplyCtx &a, BuildViews &v, const BuildParams &p);

} // namespace camdrop
