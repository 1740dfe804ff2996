/* trydemo: the program behind the units `try` must judge (linked statically, no closure).

   trydemo run               print a line, then stay up forever
   trydemo exit CODE         print a line, exit CODE at once
   trydemo late MS CODE      print a line, stay up MS milliseconds, then exit CODE
   trydemo accept MESSAGE    answer MESSAGE on the socket systemd passes as fd 3 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 2 && !strcmp(argv[1], "run")) {
        printf("trydemo: running\n");
        for (;;) pause();
    }
    if (argc >= 3 && !strcmp(argv[1], "exit")) {
        printf("trydemo: exiting with %s\n", argv[2]);
        return atoi(argv[2]);
    }
    if (argc >= 4 && !strcmp(argv[1], "late")) {
        long ms = atol(argv[2]);
        struct timespec t = { ms / 1000, (ms % 1000) * 1000000L };
        printf("trydemo: up for %ld ms, then exit %s\n", ms, argv[3]);
        nanosleep(&t, NULL);
        return atoi(argv[3]);
    }
    if (argc >= 3 && !strcmp(argv[1], "accept")) {
        printf("trydemo: socket-activated\n");
        for (;;) {
            int c = accept(3, NULL, NULL);
            if (c < 0) { perror("trydemo: accept"); return 1; }
            dprintf(c, "%s\n", argv[2]);
            close(c);
        }
    }
    fprintf(stderr, "usage: trydemo run|exit CODE|late MS CODE|accept MESSAGE\n");
    return 2;
}
