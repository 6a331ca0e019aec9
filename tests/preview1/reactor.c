/* A WASI preview-1 reactor (a library with no main), built with
 * -mexec-model=reactor: lifehook refuses it with what to build instead. */
__attribute__((export_name("answer"))) int answer(void) { return 42; }
