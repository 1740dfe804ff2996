/* Asks what a database's first start asks: who am I (getpwuid(geteuid())), and
 * does the locale in the environment load (setlocale(LC_ALL, "")). Linked
 * dynamically: glibc's NSS and locale loading are what is under test. */
#include <errno.h>
#include <locale.h>
#include <pwd.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(void) {
    int failed = 0;
    errno = 0;
    struct passwd *pw = getpwuid(geteuid());
    if (pw == NULL) {
        /* PostgreSQL's initdb words it this way */
        printf("probe: could not look up effective user ID %ld: %s\n", (long)geteuid(),
               errno ? strerror(errno) : "user does not exist");
        failed = 1;
    } else {
        printf("probe: user=%s uid=%ld\n", pw->pw_name, (long)pw->pw_uid);
    }
    const char *loc = setlocale(LC_ALL, "");
    printf("probe: locale=%s\n", loc ? loc : "FAILED");
    fflush(stdout);
    return failed || loc == NULL;
}
