/*
 * Open-loop HTTP/1.1 load generator: sends POST requests at a fixed rate, whatever the server's
 * answers do, and times each one from when it was due, not from when it was sent (so a stall
 * that delays later requests is counted in their latency: no coordinated omission, as wrk2).
 *
 * Request k is due at start + k / rate. Each of `connections` threads keeps one keep-alive
 * connection; a free thread takes the next k, waits until it is due, sends it and reads the
 * whole answer. When every connection is busy a due request waits for one, and that wait is in
 * its latency. Every body is the template with "@@ID@@" replaced by `<prefix><k>`, so each
 * request is a new event.
 *
 *   cc -O2 -pthread -o openloop openloop.c
 *   ./openloop HOST PORT PATH TOKEN RATE SECONDS CONNECTIONS PREFIX BODY_TEMPLATE_FILE
 *
 * Prints one JSON object: requests sent, answers by status, errors, achieved rate and latency
 * percentiles in milliseconds.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static const char *host, *path, *token, *prefix;
static int port;
static double rate;
static long total;
static char *before, *after; /* the body template around @@ID@@ */
static struct timespec start;
static atomic_long next_k;
static atomic_long statuses[600];
static atomic_long errors;
static int64_t *latencies_us; /* indexed by k; -1 when not answered */

static int64_t ns_of(struct timespec t) { return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec; }

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return ns_of(t);
}

static int dial(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, host, &addr.sin_addr);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static int send_all(int fd, const char *data, size_t len) {
    while (len) {
        ssize_t n = write(fd, data, len);
        if (n <= 0) return -1;
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Reads one answer (headers, then a Content-Length or chunked body); returns its status or -1.
 * Answers here are small: a chunked body is read until its last chunk ends the buffer. */
static int read_answer(int fd, char *buf, size_t cap) {
    size_t have = 0;
    char *end = NULL;
    while (!end) {
        if (have == cap - 1) return -1;
        ssize_t n = read(fd, buf + have, cap - 1 - have);
        if (n <= 0) return -1;
        have += (size_t)n;
        buf[have] = 0;
        end = strstr(buf, "\r\n\r\n");
    }
    if (strncmp(buf, "HTTP/1.", 7) != 0) return -1;
    int status = atoi(buf + 9);
    size_t head = (size_t)(end + 4 - buf);
    char *header = strcasestr(buf, "\r\ncontent-length:");
    if (header && header < end) {
        long length = atol(header + 17);
        size_t body = have - head;
        while ((long)body < length) {
            ssize_t n = read(fd, buf, cap - 1);
            if (n <= 0) return -1;
            body += (size_t)n;
        }
        return status;
    }
    header = strcasestr(buf, "\r\ntransfer-encoding: chunked");
    if (!header || header > end) return -1; /* neither: the server would close to end it */
    for (;;) {
        if (have - head >= 5 && memcmp(buf + have - 5, "0\r\n\r\n", 5) == 0 &&
            (have - head == 5 || buf[have - 6] == '\n'))
            return status;
        if (have == cap - 1) return -1;
        ssize_t n = read(fd, buf + have, cap - 1 - have);
        if (n <= 0) return -1;
        have += (size_t)n;
    }
}

static void *worker(void *unused) {
    (void)unused;
    size_t cap = strlen(before) + strlen(after) + strlen(prefix) + 24;
    char *body = malloc(cap);
    char *request = malloc(cap + 1024);
    char *answer = malloc(65536);
    int fd = dial();
    for (;;) {
        long k = atomic_fetch_add(&next_k, 1);
        if (k >= total) break;
        int64_t due = ns_of(start) + (int64_t)((double)k * 1e9 / rate);
        struct timespec at = {.tv_sec = due / 1000000000, .tv_nsec = due % 1000000000};
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &at, NULL) == EINTR) {
        }
        int body_len = snprintf(body, cap, "%s%s%ld%s", before, prefix, k, after);
        int len = snprintf(request, cap + 1024,
                           "POST %s HTTP/1.1\r\nHost: %s:%d\r\nAuthorization: Bearer %s\r\n"
                           "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
                           path, host, port, token, body_len, body);
        int status = -1;
        for (int attempt = 0; attempt < 2 && status < 0; attempt++) {
            if (fd < 0) fd = dial();
            if (fd >= 0 && send_all(fd, request, (size_t)len) == 0) status = read_answer(fd, answer, 65536);
            if (status < 0 && fd >= 0) {
                close(fd); /* the server closed a kept-alive connection: one retry on a new one */
                fd = -1;
            }
        }
        if (status < 0 || status >= 600) {
            atomic_fetch_add(&errors, 1);
            continue;
        }
        atomic_fetch_add(&statuses[status], 1);
        latencies_us[k] = (now_ns() - due) / 1000;
    }
    if (fd >= 0) close(fd);
    free(body);
    free(request);
    free(answer);
    return NULL;
}

static int by_value(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static char *slurp(const char *file) {
    FILE *f = fopen(file, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *data = malloc((size_t)size + 1);
    data[fread(data, 1, (size_t)size, f)] = 0;
    fclose(f);
    return data;
}

int main(int argc, char **argv) {
    if (argc != 10) {
        fprintf(stderr, "usage: %s HOST PORT PATH TOKEN RATE SECONDS CONNECTIONS PREFIX BODY_TEMPLATE_FILE\n", argv[0]);
        return 2;
    }
    host = argv[1];
    port = atoi(argv[2]);
    path = argv[3];
    token = argv[4];
    rate = atof(argv[5]);
    double seconds = atof(argv[6]);
    int connections = atoi(argv[7]);
    prefix = argv[8];
    char *template = slurp(argv[9]);
    char *mark = template ? strstr(template, "@@ID@@") : NULL;
    if (!mark || rate <= 0 || seconds <= 0 || connections <= 0) {
        fprintf(stderr, "need a positive rate, duration and connection count, and a template with @@ID@@\n");
        return 2;
    }
    *mark = 0;
    before = template;
    after = mark + 6;
    total = (long)(rate * seconds);
    latencies_us = malloc(sizeof(int64_t) * (size_t)total);
    for (long k = 0; k < total; k++) latencies_us[k] = -1;

    pthread_t *threads = calloc((size_t)connections, sizeof(pthread_t));
    clock_gettime(CLOCK_MONOTONIC, &start);
    start.tv_nsec += 50000000; /* 50 ms for the threads to connect */
    if (start.tv_nsec >= 1000000000) {
        start.tv_sec += 1;
        start.tv_nsec -= 1000000000;
    }
    for (int i = 0; i < connections; i++) pthread_create(&threads[i], NULL, worker, NULL);
    for (int i = 0; i < connections; i++) pthread_join(threads[i], NULL);
    double elapsed = (double)(now_ns() - ns_of(start)) / 1e9;

    const char *dump = getenv("OPENLOOP_DUMP"); /* one line per request: k, latency in us (-1: no answer) */
    if (dump) {
        FILE *f = fopen(dump, "w");
        for (long k = 0; f && k < total; k++) fprintf(f, "%ld %lld\n", k, (long long)latencies_us[k]);
        if (f) fclose(f);
    }
    long answered = 0;
    for (long k = 0; k < total; k++)
        if (latencies_us[k] >= 0) latencies_us[answered++] = latencies_us[k];
    qsort(latencies_us, (size_t)answered, sizeof(int64_t), by_value);
#define PCT(p) (answered ? (double)latencies_us[(long)((double)(answered - 1) * (p))] / 1000.0 : 0.0)
    printf("{\"rate\": %.0f, \"seconds\": %.1f, \"connections\": %d, \"sent\": %ld, \"answered\": %ld, "
           "\"errors\": %ld, \"achieved_per_s\": %.1f, \"statuses\": {",
           rate, seconds, connections, total, answered, (long)errors, (double)answered / elapsed);
    int first = 1;
    for (int s = 0; s < 600; s++)
        if (statuses[s]) {
            printf("%s\"%d\": %ld", first ? "" : ", ", s, (long)statuses[s]);
            first = 0;
        }
    printf("}, \"p50_ms\": %.2f, \"p90_ms\": %.2f, \"p99_ms\": %.2f, \"p999_ms\": %.2f, \"max_ms\": %.2f}\n", PCT(0.5),
           PCT(0.9), PCT(0.99), PCT(0.999), PCT(1.0));
    return 0;
}
