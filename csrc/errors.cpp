// The per-thread record of errors.h.
#include "errors.h"

#include <cstdarg>
#include <cstdio>

namespace camdrop {

namespace {
thread_local Error record = {Err::Value, ""};
}

int fail(Err kind, const char *format, ...) {
    record.kind = kind;
    va_list args;
    va_start(args, format);
    std::vsnprintf(record.message, sizeof record.message, format, args);
    va_end(args);
    return -1;
}

int fail_memory() { return fail(Err::Memory, "out of memory in the native CPU kernels"); }

const Error &last_error() { return record; }

} // namespace camdrop
