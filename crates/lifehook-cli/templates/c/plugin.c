/* {{name}}: a lifehook plugin in C, a WASI preview-1 command.
 *
 * lifehook adapts the module into a component by itself and runs it as a
 * step: its arguments are the step's `args`, its environment the step's
 * `env` (plus the variables `allow.env` lets through), it sees only the
 * directories the step grants, and exit code 0 is success (any other code
 * fails the step, reported as the code given here).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    /* Settings from the step's env, with defaults. */
    const char *dir = getenv("STATE_DIR");
    const char *who = getenv("WHO");
    if (dir == NULL || *dir == '\0') {
        dir = "/state";
    }
    if (who == NULL) {
        who = "the cluster";
    }
    /* The first argument, if any, is the event. */
    const char *event = argc > 1 ? argv[1] : "stopping";

    char path[4096];
    snprintf(path, sizeof path, "%s/%s.txt", dir, argv[0]);
    FILE *out = fopen(path, "w");
    if (out == NULL) {
        fprintf(stderr, "cannot write %s: %s (grant %s read-write in allow.dirs)\n",
                path, strerror(errno), dir);
        return 1;
    }
    fprintf(out, "%s: %s, %s\n", argv[0], event, who);
    if (fclose(out) != 0) {
        fprintf(stderr, "cannot finish %s: %s\n", path, strerror(errno));
        return 1;
    }
    printf("%s said hello to %s (wrote %s)\n", argv[0], who, path);
    return 0;
}
