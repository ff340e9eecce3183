/*
 * tlsload: a TLS client under load for the hot-patch test, linked against the
 * package's libssl and libcrypto. A worker thread does full handshakes in a loop against
 * 127.0.0.1:PORT (an `openssl s_server -www`): connect, handshake (TLS 1.3 and 1.2 in
 * turn), GET /, read the answer to its end, check its status line. Each line on stdin
 * prints the counters "ok=N fail=M"; a failure also prints its reason on stderr.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

static atomic_long ok_count, fail_count;
static int port;

/* handshake runs one connection and returns 1 when the server answered 200. */
static int handshake(SSL_CTX *ctx, int tls12)
{
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };
    char buf[4096];
    int fd, n, got = 0, ok = 0;
    SSL *ssl = NULL;

    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if ((fd = socket(AF_INET, SOCK_STREAM, 0)) < 0)
        return 0;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        perror("connect");
        goto done;
    }
    if ((ssl = SSL_new(ctx)) == NULL || !SSL_set_fd(ssl, fd)
        || !SSL_set_max_proto_version(ssl, tls12 ? TLS1_2_VERSION : TLS1_3_VERSION)
        || SSL_connect(ssl) != 1) {
        fprintf(stderr, "handshake failed\n");
        ERR_print_errors_fp(stderr);
        goto done;
    }
    if (SSL_write(ssl, "GET / HTTP/1.0\r\n\r\n", 18) != 18)
        goto done;
    while ((n = SSL_read(ssl, buf + got, sizeof(buf) - 1 - got)) > 0) {
        got += n;
        if (got == (int)sizeof(buf) - 1)
            got = 32; /* keep the status line, drop the page body */
    }
    buf[got] = 0;
    ok = strncmp(buf, "HTTP/1.0 200 ok", 15) == 0;
    if (!ok)
        fprintf(stderr, "bad answer: %.40s\n", buf);
done:
    SSL_free(ssl);
    close(fd);
    return ok;
}

static void *loop(void *arg)
{
    SSL_CTX *ctx = arg;

    for (long i = 0;; i++) {
        if (handshake(ctx, i & 1))
            atomic_fetch_add(&ok_count, 1);
        else
            atomic_fetch_add(&fail_count, 1);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    SSL_CTX *ctx;
    pthread_t th;
    char line[64];

    if (argc != 2 || (port = atoi(argv[1])) <= 0) {
        fprintf(stderr, "usage: tlsload PORT\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    if ((ctx = SSL_CTX_new(TLS_client_method())) == NULL)
        return 1;
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    if (pthread_create(&th, NULL, loop, ctx) != 0)
        return 1;
    printf("%s\n", OpenSSL_version(OPENSSL_VERSION));
    while (fgets(line, sizeof(line), stdin) != NULL)
        printf("ok=%ld fail=%ld\n", atomic_load(&ok_count), atomic_load(&fail_count));
    /* Leave without exit handlers: the library's cleanup would race the worker. */
    _exit(0);
}
