// How the stages report a refused input: the check records a message for this thread and returns
// -1; the entry point that called it turns the record into its caller's exception (module.cpp:
// Python's TypeError/ValueError/MemoryError; torch/ops.cpp: c10's). No Python and no torch here,
// so the stages run with the GIL released and serve both extensions.
#pragma once

namespace camdrop {

enum class Err : int { Type, Value, Memory };

struct Error {
    Err kind;
    char message[512];
};

// Records a printf-style message of ``kind`` for this thread; returns -1.
int fail(Err kind, const char *format, ...) __attribute__((format(printf, 2, 3)));

// fail(Err::Memory, ...) for an allocation that failed.
int fail_memory();

// This thread's last record.
const Error &last_error();

} // namespace camdrop
