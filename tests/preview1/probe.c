/* A WASI preview-1 command for the preview-1 tests: what it does is
 * chosen by MODE in its environment. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    const char *mode = getenv("MODE");
    if (mode == NULL) {
        mode = "write";
    }
    if (strcmp(mode, "write") == 0) {
        /* Args and env in, a file in a granted directory out. */
        const char *who = getenv("WHO");
        FILE *out = fopen("/out/probe.txt", "w");
        if (out == NULL) {
            fprintf(stderr, "cannot write /out/probe.txt: %s\n", strerror(errno));
            return 1;
        }
        fprintf(out, "argv0=%s who=%s", argv[0], who ? who : "(unset)");
        for (int i = 1; i < argc; i++) {
            fprintf(out, " arg=%s", argv[i]);
        }
        fputc('\n', out);
        fclose(out);
        printf("wrote /out/probe.txt\n");
        return 0;
    }
    if (strcmp(mode, "outside") == 0) {
        FILE *f = fopen("/etc/hostname", "r");
        if (f == NULL) {
            fprintf(stderr, "cannot read /etc/hostname: %s\n", strerror(errno));
            return 2;
        }
        return 0;
    }
    if (strcmp(mode, "spin") == 0) {
        volatile unsigned long n = 0;
        for (;;) {
            n++;
        }
    }
    if (strcmp(mode, "exit") == 0) {
        fprintf(stderr, "giving up with 3\n");
        exit(3);
    }
    fprintf(stderr, "unknown MODE %s\n", mode);
    return 1;
}
