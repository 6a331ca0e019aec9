/* A preview-1 command importing a function the WASI adapter does not
 * provide: lifehook refuses it, naming the import. */
__attribute__((import_module("env"), import_name("mystery"))) extern void mystery(void);

int main(void) {
    mystery();
    return 0;
}
