/* Runs embedpipe's AArch64 kernel object under emulation.
 *
 * Build: aarch64-linux-gnu-gcc -O1 -static -DQUANT=<sym> -DQ8MM=<sym> -DF32MM=<sym> -DMR=<m>
 *        neon_harness.c kernels.o -o harness
 * Usage: harness int   T N K P weights.bin scales.bin x.bin y.bin
 *        harness float T N K P weights.bin -          x.bin y.bin
 *        harness codes T N K P codes.bin   scales.bin x.bin y.bin   (codes1: the one-row tile)
 *        harness gelu  T N 0 0 b.bin      -          a.bin out.bin   (gelu_tanh(a)·b)
 *        harness rms   T N 0 0 w.bin      -          x.bin out.bin   (rows of length N)
 *        harness addnorm T N K P weights.bin scales.bin in.bin out.bin
 *            in = x (T,K) | y (T,K) | w_post (K) | w_pre (K); out = product (T,N) | x' (T,K)
 *        harness geluw T N K P weights.bin scales.bin gu.bin out.bin   (gu is (T, 2K))
 *        harness resnorm T N K P weights.bin scales.bin in.bin out.bin   (rows of D = K - 32, block 0 extended)
 *            in = x (T,D) | bias (D) | res (T,D) | w (D) | beta (D); out = product (T,N) | x' (T,D)
 *        harness qknr  T 0 D 0 -          -          in.bin out.bin   (3 query heads, 1 KV head)
 *            in = qkv (T,5D) | qw (D) | kw (D) | cos (T,D/2) | sin (T,D/2); out = q | k | v
 * Files are raw little-endian arrays laid out exactly as embedpipe's packers produce them.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void QUANT(const float *x, void *xq, float *xd, int32_t *xc, int64_t T, int64_t K, int64_t t0,
           int64_t t1);
void Q8MM(const void *wq, const float *wd, const void *xq, const float *xd, const int32_t *xc,
          float *y, int64_t T, int64_t N, int64_t K, int64_t ldy, int64_t t0, int64_t t1,
          int64_t p0, int64_t p1);
void GELU(const float *a, const float *b, float *out, int64_t start, int64_t stop);
void RMS(const float *x, const float *w, float *out, int64_t d, float eps, int64_t r0, int64_t r1);
void RESNORM(const float *x, const float *bias, const float *res, const float *w, const float *beta,
             float *x_out, const int64_t *sel, int64_t nsel, float eps, void *xq, float *xd, int32_t *xc,
             int64_t T, int64_t K, int64_t qa, int64_t qb, const void *wq, const float *wd, float *out,
             int64_t N, int64_t ldy, int64_t a, int64_t b, int64_t p0, int64_t p1);
void ADDNORM(const float *x, const float *y, const float *w_post, float *x_out, const float *w_pre,
             float eps, int64_t write_x, void *xq, float *xd, int32_t *xc, int64_t T, int64_t K,
             int64_t qa, int64_t qb, const void *wq, const float *wd, float *out, int64_t N,
             int64_t ldy, int64_t a, int64_t b, int64_t p0, int64_t p1);
void GELUW(const float *gu, void *xq, float *xd, int32_t *xc, int64_t T, int64_t K, int64_t qa,
           int64_t qb, const void *wq, const float *wd, float *out, int64_t N, int64_t ldy,
           int64_t a, int64_t b, int64_t p0, int64_t p1);
void QKNR(const float *qkv, float *q, float *k, float *v, const float *qw, const float *kw,
          const float *cos, const float *sin, int64_t Hq, int64_t Hkv, int64_t D, int64_t Dv,
          float eps, int64_t r0, int64_t r1);
void C8MM(const void *wq, const float *wd, const float *x, float *y, int64_t T, int64_t N, int64_t K,
          int64_t ldy, int64_t t0, int64_t t1, int64_t p0, int64_t p1);
void C8MV(const void *wq, const float *wd, const float *x, float *y, int64_t T, int64_t N, int64_t K,
          int64_t ldy, int64_t t0, int64_t t1, int64_t p0, int64_t p1);
void F32MM(const float *w, const float *x, float *y, int64_t T, int64_t N, int64_t K,
           int64_t ldy, int64_t t0, int64_t t1, int64_t p0, int64_t p1);

static void *aligned(size_t n) {
    void *p = NULL;
    if (posix_memalign(&p, 64, n ? n : 64) != 0) { perror("posix_memalign"); exit(2); }
    memset(p, 0, n ? n : 64);
    return p;
}

static void *slurp(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(2); }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *p = aligned((size_t)n);
    if (fread(p, 1, (size_t)n, f) != (size_t)n) { perror(path); exit(2); }
    fclose(f);
    *size = (size_t)n;
    return p;
}

static void dump(const char *path, const float *p, size_t n) {
    FILE *out = fopen(path, "wb");
    if (!out || fwrite(p, 4, n, out) != n) { perror(path); exit(2); }
    fclose(out);
}

/* The fused kernels: one call over every row, as the Python drivers make it for one thread;
   then as a two-thread panel split makes them (prologue rows in two halves with empty products,
   then every row by two halves of the panels with empty prologues), which must give the same bits. */
static int fused(char **argv, int64_t T, int64_t N, int64_t K, int64_t P) {
    size_t size;
    float *in = slurp(argv[8], &size);
    int64_t tpad = (T + MR - 1) / MR * MR;
    void *xq = aligned((size_t)(tpad * K * 2));
    float *xd = aligned((size_t)(tpad * K / 32 * 4));
    int32_t *xc = aligned((size_t)(tpad * K / 32 * 4));
    if (strcmp(argv[1], "qknr") == 0) {
        int64_t D = K, H = 5 * D;
        float *out = aligned((size_t)(T * H * 4));
        const float *qw = in + T * H, *kw = qw + D, *cs = kw + D, *sn = cs + T * D / 2;
        QKNR(in, out, out + T * 3 * D, out + T * 4 * D, qw, kw, cs, sn, 3, 1, D, D, 1e-6f, 0, T);
        dump(argv[9], out, (size_t)(T * H));
        return 0;
    }
    void *wq = slurp(argv[6], &size);
    float *wd = slurp(argv[7], &size);
    size_t n_out = (size_t)(T * (N + K));
    float *out = aligned(n_out * 4), *split = aligned(n_out * 4);
    memset(out, 0, n_out * 4);
    memset(split, 0, n_out * 4);
    int64_t rh = tpad / 2, ph = P / 2;
#define SCRUB() (memset(xq, 0x55, (size_t)(tpad * K * 2)), memset(xd, 0x55, (size_t)(tpad * K / 32 * 4)), \
                 memset(xc, 0x55, (size_t)(tpad * K / 32 * 4)))
    if (strcmp(argv[1], "addnorm") == 0) {
        const float *x = in, *y = in + T * K, *w_post = y + T * K, *w_pre = w_post + K;
        ADDNORM(x, y, w_post, out + T * N, w_pre, 1e-6f, 1, xq, xd, xc, T, K, 0, tpad, wq, wd, out, N, N,
                0, tpad, 0, P);
        SCRUB(); /* the split must prepare every row itself */
        ADDNORM(x, y, w_post, split + T * N, w_pre, 1e-6f, 1, xq, xd, xc, T, K, 0, rh, wq, wd, split, N, N, 0, 0, 0, 0);
        ADDNORM(x, y, w_post, split + T * N, w_pre, 1e-6f, 1, xq, xd, xc, T, K, rh, tpad, wq, wd, split, N, N, 0, 0,
                0, 0);
        ADDNORM(x, y, w_post, split + T * N, w_pre, 1e-6f, 0, xq, xd, xc, T, K, 0, 0, wq, wd, split, N, N, 0, tpad, 0,
                ph);
        ADDNORM(x, y, w_post, split + T * N, w_pre, 1e-6f, 0, xq, xd, xc, T, K, 0, 0, wq, wd, split, N, N, 0, tpad, ph,
                P);
    } else if (strcmp(argv[1], "resnorm") == 0) {
        static const int64_t sel[1] = {0};
        int64_t D = K - 32;
        const float *x = in, *bias = x + T * D, *res = bias + D, *w = res + T * D, *beta = w + D;
        n_out = (size_t)(T * (N + D));
        RESNORM(x, bias, res, w, beta, out + T * N, sel, 1, 1e-12f, xq, xd, xc, T, K, 0, tpad, wq, wd, out, N, N, 0,
                tpad, 0, P);
        SCRUB();
        RESNORM(x, bias, res, w, beta, split + T * N, sel, 1, 1e-12f, xq, xd, xc, T, K, 0, rh, wq, wd, split, N, N, 0,
                0, 0, 0);
        RESNORM(x, bias, res, w, beta, split + T * N, sel, 1, 1e-12f, xq, xd, xc, T, K, rh, tpad, wq, wd, split, N, N,
                0, 0, 0, 0);
        RESNORM(x, bias, res, w, beta, split + T * N, sel, 1, 1e-12f, xq, xd, xc, T, K, 0, 0, wq, wd, split, N, N, 0,
                tpad, 0, ph);
        RESNORM(x, bias, res, w, beta, split + T * N, sel, 1, 1e-12f, xq, xd, xc, T, K, 0, 0, wq, wd, split, N, N, 0,
                tpad, ph, P);
    } else {
        n_out = (size_t)(T * N);
        GELUW(in, xq, xd, xc, T, K, 0, tpad, wq, wd, out, N, N, 0, tpad, 0, P);
        SCRUB();
        GELUW(in, xq, xd, xc, T, K, 0, rh, wq, wd, split, N, N, 0, 0, 0, 0);
        GELUW(in, xq, xd, xc, T, K, rh, tpad, wq, wd, split, N, N, 0, 0, 0, 0);
        GELUW(in, xq, xd, xc, T, K, 0, 0, wq, wd, split, N, N, 0, tpad, 0, ph);
        GELUW(in, xq, xd, xc, T, K, 0, 0, wq, wd, split, N, N, 0, tpad, ph, P);
    }
    if (memcmp(out, split, n_out * 4) != 0) {
        fprintf(stderr, "%s: the split calls differ from the whole call\n", argv[1]);
        return 3;
    }
    dump(argv[9], out, n_out);
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 10) { fprintf(stderr, "usage: see source\n"); return 2; }
    if (strcmp(argv[1], "addnorm") == 0 || strcmp(argv[1], "geluw") == 0 || strcmp(argv[1], "qknr") == 0 ||
        strcmp(argv[1], "resnorm") == 0)
        return fused(argv, atoll(argv[2]), atoll(argv[3]), atoll(argv[4]), atoll(argv[5]));
    int64_t T = atoll(argv[2]), N = atoll(argv[3]), K = atoll(argv[4]), P = atoll(argv[5]);
    size_t size;
    void *w = slurp(argv[6], &size);
    float *x = slurp(argv[8], &size);
    int64_t cols = (strcmp(argv[1], "gelu") == 0 || strcmp(argv[1], "rms") == 0) ? N : K;
    if (size != (size_t)(T * cols * 4)) { fprintf(stderr, "x has %zu bytes\n", size); return 2; }
    float *y = aligned((size_t)(T * N * 4));
    int64_t tpad = (T + MR - 1) / MR * MR;
    if (strcmp(argv[1], "int") == 0) {
        float *wd = slurp(argv[7], &size);
        void *xq = aligned((size_t)(tpad * K * 2));
        float *xd = aligned((size_t)(tpad * K / 32 * 4));
        int32_t *xc = aligned((size_t)(tpad * K / 32 * 4));
        QUANT(x, xq, xd, xc, T, K, 0, tpad);
        Q8MM(w, wd, xq, xd, xc, y, T, N, K, N, 0, tpad, 0, P);
    } else if (strcmp(argv[1], "codes") == 0 || strcmp(argv[1], "codes1") == 0) {
        float *wd = slurp(argv[7], &size);
        (strcmp(argv[1], "codes") == 0 ? C8MM : C8MV)(w, wd, x, y, T, N, K, N, 0, T, 0, P);
    } else if (strcmp(argv[1], "gelu") == 0) {
        GELU(x, w, y, 0, T * N);
    } else if (strcmp(argv[1], "rms") == 0) {
        RMS(x, w, y, N, 1e-6f, 0, T);
    } else {
        F32MM(w, x, y, T, N, K, N, 0, T, 0, P);
    }
    FILE *out = fopen(argv[9], "wb");
    if (!out || fwrite(y, 4, (size_t)(T * N), out) != (size_t)(T * N)) { perror(argv[9]); return 2; }
    fclose(out);
    return 0;
}
