/* psdemo: the small server the end-to-end tests ship in their images (linked statically,
   so the tests do not depend on the library closure).

   psdemo serve PORT MESSAGE     append a line to $STATE_DIRECTORY/hello.txt (when set), then
                                 answer MESSAGE on 127.0.0.1:PORT forever
   psdemo sockserve MESSAGE      answer MESSAGE on the socket systemd passes as fd 3
   psdemo say WORDS...           print the words and exit 0
   psdemo report PORT            print uid, capability bounding set and no_new_privs, then
                                 try to serve "report" on 127.0.0.1:PORT (stays up either way)
   psdemo probe PATH...          for each path: exists? a folder we can write to? print it;
                                 exit 1 when one is missing */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

static void answer_forever(int s, const char *msg) {
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0) { if (errno == EINTR) continue; perror("psdemo: accept"); exit(1); }
        dprintf(c, "%s\n", msg);
        close(c);
    }
}

static int listen_on(int port) {
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    if (s < 0) { printf("psdemo: inet socket: %s\n", strerror(errno)); return -1; }
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(s, (struct sockaddr *)&a, sizeof a) < 0 || listen(s, 16) < 0) {
        printf("psdemo: bind/listen 127.0.0.1:%d: %s\n", port, strerror(errno));
        close(s);
        return -1;
    }
    printf("psdemo: listening on 127.0.0.1:%d\n", port);
    return s;
}

static void status_line(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[512];
    if (!f) return;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, key, strlen(key)) == 0) printf("psdemo: %s", line);
    fclose(f);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2) { fprintf(stderr, "usage: psdemo serve|sockserve|say|report|probe ...\n"); return 2; }
    const char *mode = argv[1];
    if (!strcmp(mode, "serve") && argc >= 4) {
        const char *sd = getenv("STATE_DIRECTORY");
        if (sd) {
            char path[4096];
            snprintf(path, sizeof path, "%s/hello.txt", sd);
            FILE *f = fopen(path, "a");
            if (!f) { printf("psdemo: cannot open %s: %s\n", path, strerror(errno)); return 1; }
            fprintf(f, "hello from psdemo uid=%d\n", (int)getuid());
            fclose(f);
            printf("psdemo: wrote %s\n", path);
        }
        int s = listen_on(atoi(argv[2]));
        if (s < 0) return 1;
        answer_forever(s, argv[3]);
    }
    if (!strcmp(mode, "sockserve") && argc >= 3) {
        const char *fds = getenv("LISTEN_FDS");
        if (!fds || atoi(fds) < 1) { printf("psdemo: no socket passed (LISTEN_FDS unset)\n"); return 1; }
        printf("psdemo: socket-activated, serving fd 3\n");
        answer_forever(3, argv[2]);
    }
    if (!strcmp(mode, "say")) {
        for (int i = 2; i < argc; i++) printf("%s%s", argv[i], i + 1 < argc ? " " : "\n");
        return 0;
    }
    if (!strcmp(mode, "report") && argc >= 3) {
        printf("psdemo: uid=%d\n", (int)getuid());
        status_line("CapBnd:");
        status_line("NoNewPrivs:");
        int s = listen_on(atoi(argv[2]));
        if (s >= 0) answer_forever(s, "report");
        for (;;) pause();
    }
    if (!strcmp(mode, "probe")) {
        int missing = 0;
        char cwd[4096];
        if (getcwd(cwd, sizeof cwd)) printf("psdemo: cwd=%s\n", cwd);
        for (int i = 2; i < argc; i++) {
            struct stat st;
            if (stat(argv[i], &st) < 0) {
                printf("psdemo: %s: %s\n", argv[i], strerror(errno));
                missing = 1;
                continue;
            }
            if (!S_ISDIR(st.st_mode)) {
                char buf[128] = "";
                int fd = open(argv[i], O_RDONLY);
                if (fd < 0) {  /* a device the cgroup policy refuses: say why */
                    printf("psdemo: %s: open: %s\n", argv[i], strerror(errno));
                    continue;
                }
                ssize_t n = read(fd, buf, sizeof buf - 1);
                if (n > 0) buf[strcspn(buf, "\n")] = 0;
                close(fd);
                printf("psdemo: %s: file: %s\n", argv[i], buf);
                continue;
            }
            char path[4200];
            snprintf(path, sizeof path, "%s/probe.txt", argv[i]);
            int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
            printf("psdemo: %s: folder, %s\n", argv[i], fd >= 0 ? "writable" : strerror(errno));
            if (fd >= 0) close(fd);
        }
        return missing;
    }
    fprintf(stderr, "psdemo: bad arguments\n");
    return 2;
}
