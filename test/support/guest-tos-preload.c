/* guest-tos-preload: LD_PRELOAD shim for test/70. Before a server socket listens it gets
 * the TOS byte (IPv4) or traffic class (IPv6) from REMUSDB_TEST_TOS; Linux copies it to
 * every accepted connection. That is "the application's own DSCP", which the commit
 * protection must restore when it deprotects a socket. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>

int listen(int fd, int backlog)
{
	static int (*real_listen)(int, int);
	const char *tos = getenv("REMUSDB_TEST_TOS");
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	if (!real_listen)
		real_listen = (int (*)(int, int))dlsym(RTLD_NEXT, "listen");
	if (tos && getsockname(fd, (struct sockaddr *)&ss, &len) == 0) {
		int v = atoi(tos);

		if (ss.ss_family == AF_INET)
			setsockopt(fd, IPPROTO_IP, IP_TOS, &v, sizeof(v));
		else if (ss.ss_family == AF_INET6)
			setsockopt(fd, IPPROTO_IPV6, IPV6_TCLASS, &v, sizeof(v));
	}
	return real_listen(fd, backlog);
}
