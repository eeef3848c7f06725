/* engine_main: the engine's test harness.
 *
 *   engine_main WEIGHTS TOKENS [--threads N] [--streams S] [--context C] [--isa NAME] [--step K]
 *
 * TOKENS is a file of whitespace-separated token ids.  Stream 0 evaluates the start
 * token then the ids; streams 1..S-1 run beside it in lockstep with the same ids rotated
 * by 7*i (so the group holds different texts).  Every call evaluates K tokens per stream
 * (default 1).  Prints the SHA-256 of stream 0's float32 logits (little-endian bytes)
 * after each call, concatenated in order, and the time taken.
 */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine.h"

/* ---- a small SHA-256 (FIPS 180-4) */
typedef struct {
    uint32_t h[8];
    uint64_t len;
    uint8_t buf[64];
    size_t n;
} sha256;

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha_block(sha256 *s, const uint8_t *p) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = s->h[0], b = s->h[1], c = s->h[2], d = s->h[3], e = s->h[4], f = s->h[5], g = s->h[6], h = s->h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = h + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K256[i] + w[i];
        uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
    }
    s->h[0] += a, s->h[1] += b, s->h[2] += c, s->h[3] += d, s->h[4] += e, s->h[5] += f, s->h[6] += g, s->h[7] += h;
}

static void sha_init(sha256 *s) {
    static const uint32_t h0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(s->h, h0, sizeof h0);
    s->len = 0;
    s->n = 0;
}

static void sha_update(sha256 *s, const void *data, size_t len) {
    const uint8_t *p = data;
    s->len += len;
    while (len) {
        size_t k = 64 - s->n < len ? 64 - s->n : len;
        memcpy(s->buf + s->n, p, k);
        s->n += k, p += k, len -= k;
        if (s->n == 64) {
            sha_block(s, s->buf);
            s->n = 0;
        }
    }
}

static void sha_final(sha256 *s, uint8_t out[32]) {
    uint64_t bits = s->len * 8;
    uint8_t pad = 0x80, zero = 0;
    sha_update(s, &pad, 1);
    while (s->n != 56)
        sha_update(s, &zero, 1);
    uint8_t lb[8];
    for (int i = 0; i < 8; i++)
        lb[i] = (uint8_t)(bits >> (56 - 8 * i));
    sha_update(s, lb, 8);
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 4; j++)
            out[4 * i + j] = (uint8_t)(s->h[i] >> (24 - 8 * j));
}

static void hash_floats(sha256 *s, const float *x, int n) {
    for (int i = 0; i < n; i++) { /* little-endian bytes on any host */
        uint32_t b;
        memcpy(&b, x + i, 4);
        uint8_t le[4] = {(uint8_t)b, (uint8_t)(b >> 8), (uint8_t)(b >> 16), (uint8_t)(b >> 24)};
        sha_update(s, le, 4);
    }
}

int main(int argc, char **argv) {
    if (argc == 2 && !strcmp(argv[1], "--selfcheck")) {
        char report[200];
        long bad = lmz_selfcheck(report, sizeof report);
        printf("%s\n", report);
        return bad ? 1 : 0;
    }
    if (argc < 3) {
        fprintf(stderr, "usage: %s WEIGHTS TOKENS [--threads N] [--streams S] [--context C] [--isa NAME] [--step K]\n"
                "       %s --selfcheck\n",
                argv[0], argv[0]);
        return 2;
    }
    int threads = 1, streams = 1, context = 2048, stepk = 1;
    const char *isa = NULL;
    for (int i = 3; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--threads"))
            threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--streams"))
            streams = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--context"))
            context = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--isa"))
            isa = argv[i + 1];
        else if (!strcmp(argv[i], "--step"))
            stepk = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "unknown option %s\n", argv[i]);
            return 2;
        }
    }
    FILE *f = fopen(argv[2], "r");
    if (!f) {
        perror(argv[2]);
        return 2;
    }
    int cap = 1024, n = 0;
    int32_t *toks = malloc(sizeof(int32_t) * cap);
    long v;
    while (fscanf(f, "%ld", &v) == 1) {
        if (n == cap)
            toks = realloc(toks, sizeof(int32_t) * (cap *= 2));
        toks[n++] = (int32_t)v;
    }
    fclose(f);
    char err[256];
    lmz_model *m = lmz_load(argv[1], threads, isa, err, sizeof err);
    if (!m) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    int V = lmz_n_vocab(m);
    /* per stream: the start token then the (rotated) ids */
    int len = n + 1;
    int32_t *seq = malloc(sizeof(int32_t) * (size_t)len * streams);
    for (int s = 0; s < streams; s++) {
        seq[(size_t)s * len] = lmz_bos(m);
        for (int i = 0; i < n; i++)
            seq[(size_t)s * len + 1 + i] = toks[(i + 7 * s) % n];
    }
    lmz_stream **st = malloc(sizeof(*st) * streams);
    const int32_t **tp = malloc(sizeof(*tp) * streams);
    int *cnt = malloc(sizeof(int) * streams);
    for (int s = 0; s < streams; s++)
        st[s] = lmz_stream_new(m, context);
    float *logits = malloc(sizeof(float) * (size_t)V * streams);
    sha256 h;
    sha_init(&h);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int calls = 0;
    for (int i = 0; i < len; i += stepk) {
        int k = len - i < stepk ? len - i : stepk;
        for (int s = 0; s < streams; s++) {
            tp[s] = seq + (size_t)s * len + i;
            cnt[s] = k;
        }
        if (lmz_eval(m, streams, st, tp, cnt, logits) != 0) {
            fprintf(stderr, "lmz_eval failed\n");
            return 1;
        }
        hash_floats(&h, logits, V);
        calls++;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    uint8_t out[32];
    sha_final(&h, out);
    printf("sha256 ");
    for (int i = 0; i < 32; i++)
        printf("%02x", out[i]);
    double sec = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    printf("\nisa %s threads %d streams %d tokens %d calls %d seconds %.3f tokens/s %.1f\n", lmz_isa(m),
           lmz_threads(m), streams, len * streams, calls, sec, len * streams / sec);
    for (int s = 0; s < streams; s++)
        lmz_stream_free(st[s]);
    lmz_free(m);
    return 0;
}
