/* edgeloop native kernels. The numpy reference (reference.py) is the specification:
 * every float operation here happens in float32, in the order written there, and
 * the build disables FMA contraction so results match it bit for bit. */
#include "native.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#elif defined(__ARM_NEON)
#include <arm_neon.h>
#endif

enum { FMT_RGB, FMT_BGR, FMT_RGBA, FMT_GRAY, FMT_YUYV, FMT_NV12 };
enum { OUT_U8, OUT_I8, OUT_F32 };

typedef struct {
    const uint8_t *src;
    long row_stride;
    const uint8_t *uv;
    long uv_stride;
    int fmt;
    int out_c;
} frame_t;

static inline float clamp255(float v) { return v < 0.0f ? 0.0f : (v > 255.0f ? 255.0f : v); }

static inline __attribute__((always_inline)) void yuv_rgb(float y, float u, float v, float rgb[3]) {
    float c = (y - 16.0f) * 1.164f;
    float d = u - 128.0f;
    float e = v - 128.0f;
    rgb[0] = clamp255(c + 1.596f * e);
    rgb[1] = clamp255(c - 0.392f * d - 0.813f * e);
    rgb[2] = clamp255(c + 2.017f * d);
}

/* The value(s) of source pixel (y, x) as the sums want them: RGB, or luma for one channel. */
static inline __attribute__((always_inline)) void pixel(const frame_t *f, int y, int x, float out[3]) {
    const uint8_t *row = f->src + (long)y * f->row_stride;
    float rgb[3];
    switch (f->fmt) {
    case FMT_RGB: rgb[0] = row[3 * x]; rgb[1] = row[3 * x + 1]; rgb[2] = row[3 * x + 2]; break;
    case FMT_BGR: rgb[0] = row[3 * x + 2]; rgb[1] = row[3 * x + 1]; rgb[2] = row[3 * x]; break;
    case FMT_RGBA: rgb[0] = row[4 * x]; rgb[1] = row[4 * x + 1]; rgb[2] = row[4 * x + 2]; break;
    case FMT_GRAY:
        if (f->out_c == 1) { out[0] = row[x]; return; }
        rgb[0] = rgb[1] = rgb[2] = row[x];
        break;
    case FMT_YUYV: {
        const uint8_t *m = row + 4 * (x >> 1);
        yuv_rgb(row[2 * x], m[1], m[3], rgb);
        break;
    }
    default: { /* NV12 */
        const uint8_t *uv = f->uv + (long)(y >> 1) * f->uv_stride + (x & ~1);
        yuv_rgb(row[x], uv[0], uv[1], rgb);
        break;
    }
    }
    if (f->out_c == 1) {
        out[0] = 0.299f * rgb[0] + 0.587f * rgb[1] + 0.114f * rgb[2];
    } else {
        out[0] = rgb[0]; out[1] = rgb[1]; out[2] = rgb[2];
    }
}

/* Round half away from zero and saturate, exactly as the reference: clamp first (so the
 * int conversion is defined), truncate, then step away from zero on a fraction >= 0.5. */
static inline float round_away(float v, float lo, float hi) {
    v = v < lo ? lo : (v > hi ? hi : v);
    float t = (float)(int)v;
    float frac = v - t;
    return frac >= 0.5f ? t + 1.0f : (frac <= -0.5f ? t - 1.0f : t);
}

static inline void store(void *dst, long i, int dtype, float v) {
    if (dtype == OUT_F32) ((float *)dst)[i] = v;
    else if (dtype == OUT_U8) ((uint8_t *)dst)[i] = (uint8_t)round_away(v, 0.0f, 255.0f);
    else ((int8_t *)dst)[i] = (int8_t)round_away(v, -128.0f, 127.0f);
}

/* One output pixel: channel k of the output takes sum channel map[k]. */
static inline void store_px(void *dst, long at, int dtype, int out_c, const float *o, const int *map,
                            const float *alpha, const float *beta) {
    for (int k = 0; k < out_c; k++) store(dst, at + k, dtype, o[map[k]] * alpha[k] + beta[k]);
}

static void fill_pad(void *dst, int dtype, long from, long count, int c_n, const void *pad) {
    size_t size = dtype == OUT_F32 ? 4 : 1;
    for (long p = from; p < from + count; p++)
        memcpy((char *)dst + (size_t)p * c_n * size, pad, size * c_n);
}

enum { RUN_AREA, RUN_BYTES, RUN_BILINEAR, RUN_GENERIC };

typedef struct {
    void *dst;
    int out_w, out_c, dtype, in_x, in_y, in_w, in_h;
    const int32_t *ys, *yi, *xs, *xi;
    const float *yw, *xw, *alpha, *beta;
    int map[3];
    int oy0, oy1; /* the output rows (of the inner picture) this job computes */
    int kind, x_lo, x_hi, raw;
    const uint8_t *end;
} job_t;

/* Bilinear: exactly two taps on each axis. The format is a compile-time constant in
 * each instantiation below, so pixel() loses its switch. Same sums, same order as the
 * reference: o = wx0 * (wy0 p00 + wy1 p10) + wx1 * (wy0 p01 + wy1 p11). */
static inline __attribute__((always_inline)) void bilinear(const frame_t *f, const job_t *j) {
    for (int oy = j->oy0; oy < j->oy1; oy++) {
        int y0 = j->yi[2 * oy], y1 = j->yi[2 * oy + 1];
        float wy0 = j->yw[2 * oy], wy1 = j->yw[2 * oy + 1];
        long at = ((long)(j->in_y + oy) * j->out_w + j->in_x) * j->out_c;
        for (int ox = 0; ox < j->in_w; ox++, at += j->out_c) {
            int x0 = j->xi[2 * ox], x1 = j->xi[2 * ox + 1];
            float p00[3], p10[3], p01[3], p11[3], o[3];
            pixel(f, y0, x0, p00); pixel(f, y1, x0, p10);
            pixel(f, y0, x1, p01); pixel(f, y1, x1, p11);
            for (int c = 0; c < f->out_c; c++) {
                float t0 = wy0 * p00[c] + wy1 * p10[c];
                float t1 = wy0 * p01[c] + wy1 * p11[c];
                o[c] = j->xw[2 * ox] * t0 + j->xw[2 * ox + 1] * t1;
            }
            store_px(j->dst, at, j->dtype, j->out_c, o, j->map, j->alpha, j->beta);
        }
    }
}

#define SPECIALIZE(name, body)                                                              \
    static void name##_rgb(frame_t f, const job_t *j) { f.fmt = FMT_RGB; body(&f, j); }     \
    static void name##_bgr(frame_t f, const job_t *j) { f.fmt = FMT_BGR; body(&f, j); }     \
    static void name##_rgba(frame_t f, const job_t *j) { f.fmt = FMT_RGBA; body(&f, j); }   \
    static void name##_gray(frame_t f, const job_t *j) { f.fmt = FMT_GRAY; body(&f, j); }   \
    static void name##_yuyv(frame_t f, const job_t *j) { f.fmt = FMT_YUYV; body(&f, j); }   \
    static void name##_nv12(frame_t f, const job_t *j) { f.fmt = FMT_NV12; body(&f, j); }   \
    static void (*const name##_by_fmt[])(frame_t, const job_t *) = {                        \
        name##_rgb, name##_bgr, name##_rgba, name##_gray, name##_yuyv, name##_nv12};

SPECIALIZE(bilinear, bilinear)

/* The common camera case, 4 lanes at a time (GCC/Clang vector extensions: SSE on x86,
 * NEON on ARM): RGB or BGR bytes, three channels out, two taps per axis. Lane-wise
 * float32 operations are the scalar operations, so results stay bit-exact. Lane 3 is
 * padding; a pixel is loaded as 4 bytes unless that would read past the frame. */
typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));
typedef uint8_t v4b __attribute__((vector_size(4)));

/* Four bytes to four floats. GCC scalarizes __builtin_convertvector from bytes, so
 * widen with the ISA's own unpacks where there is one. */
static inline v4f widen4(uint32_t word) {
#if defined(__SSE2__)
    __m128i x = _mm_cvtsi32_si128((int)word);
    x = _mm_unpacklo_epi8(x, _mm_setzero_si128());
    x = _mm_unpacklo_epi16(x, _mm_setzero_si128());
    return (v4f)_mm_cvtepi32_ps(x);
#elif defined(__ARM_NEON)
    uint16x8_t h = vmovl_u8(vreinterpret_u8_u32(vdup_n_u32(word)));
    return (v4f)vcvtq_f32_u32(vmovl_u16(vget_low_u16(h)));
#else
    v4b b;
    memcpy(&b, &word, 4);
    return __builtin_convertvector(b, v4f);
#endif
}

static inline v4f load4(const uint8_t *p) {
    uint32_t word;
    memcpy(&word, p, 4);
    return widen4(word);
}

static inline v4f load3(const uint8_t *p, const uint8_t *end) {
    if (p + 4 <= end) return load4(p);
    uint32_t word = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16;
    return widen4(word);
}

static inline v4f select(v4i mask, v4f yes, v4f no) {
    return (v4f)(((v4i)yes & mask) | ((v4i)no & ~mask));
}

/* round_away() on four lanes. */
static inline v4i round_away4(v4f v, v4f lo, v4f hi) {
    v = select(v < lo, lo, v);
    v = select(v > hi, hi, v);
    v4i t = __builtin_convertvector(v, v4i);
    v4f frac = v - __builtin_convertvector(t, v4f);
    return t - (frac >= 0.5f) + (frac <= -0.5f);
}

/* Output constants for the vector paths, in the sums' channel order. */
typedef struct {
    v4f alpha, beta, lo, hi;
    int m0, m2;
} vout_t;

static vout_t vout(const job_t *j) {
    vout_t o = {{0, 0, 0, 0}, {0, 0, 0, 0}, {0, 0, 0, 0}, {255, 255, 255, 255}, j->map[0], j->map[2]};
    for (int k = 0; k < j->out_c; k++) { o.alpha[j->map[k]] = j->alpha[k]; o.beta[j->map[k]] = j->beta[k]; }
    if (j->dtype == OUT_I8) { o.lo -= 128; o.hi -= 128; }
    return o;
}

/* v = o * alpha + beta, rounded and saturated, stored as one output pixel. With
 * ``spill`` the pixel is written as 4 bytes, the fourth landing on the next pixel of the
 * row, which is written after it (never on the last pixel of a row). */
static inline __attribute__((always_inline)) void store3(void *dst, long at, const int dtype, v4f o,
                                                         const vout_t *c, const int spill) {
    v4f v = o * c->alpha + c->beta;
    if (dtype == OUT_F32) {
        float *d = (float *)dst + at;
        d[0] = v[c->m0]; d[1] = v[1]; d[2] = v[c->m2];
        return;
    }
    v4i q = round_away4(v, c->lo, c->hi);
    uint8_t *d = (uint8_t *)dst + at; /* int8 stores the same low byte */
#if defined(__SSE2__)
    __m128i x = (__m128i)q;
    if (c->m0 == 2) x = _mm_shuffle_epi32(x, _MM_SHUFFLE(3, 0, 1, 2));
    x = _mm_packs_epi32(x, x); /* lanes are already within the output range */
    x = dtype == OUT_I8 ? _mm_packs_epi16(x, x) : _mm_packus_epi16(x, x);
    uint32_t word = (uint32_t)_mm_cvtsi128_si32(x);
    if (spill) {
        memcpy(d, &word, 4);
    } else {
        d[0] = (uint8_t)word; d[1] = (uint8_t)(word >> 8); d[2] = (uint8_t)(word >> 16);
    }
#else
    (void)spill;
    d[0] = (uint8_t)q[c->m0]; d[1] = (uint8_t)q[1]; d[2] = (uint8_t)q[c->m2];
#endif
}

static inline __attribute__((always_inline)) void bilinear_row(const job_t *j, const uint8_t *r0,
                                                                const uint8_t *r1, const uint8_t *end, int oy,
                                                                const int dtype, const int checked,
                                                                const vout_t *c) {
    v4f wy0 = {0, 0, 0, 0}, wy1 = {0, 0, 0, 0};
    wy0 += j->yw[2 * oy];
    wy1 += j->yw[2 * oy + 1];
    long at = ((long)(j->in_y + oy) * j->out_w + j->in_x) * 3;
    for (int ox = 0; ox < j->in_w; ox++, at += 3) {
        long a = 3L * j->xi[2 * ox], b = 3L * j->xi[2 * ox + 1];
        v4f t0, t1;
        if (checked) {
            t0 = wy0 * load3(r0 + a, end) + wy1 * load3(r1 + a, end);
            t1 = wy0 * load3(r0 + b, end) + wy1 * load3(r1 + b, end);
        } else {
            t0 = wy0 * load4(r0 + a) + wy1 * load4(r1 + a);
            t1 = wy0 * load4(r0 + b) + wy1 * load4(r1 + b);
        }
        v4f o = j->xw[2 * ox] * t0 + j->xw[2 * ox + 1] * t1;
        if (ox + 1 < j->in_w) store3(j->dst, at, dtype, o, c, 1);
        else store3(j->dst, at, dtype, o, c, 0);
    }
}

static inline __attribute__((always_inline)) void bilinear_bytes_t(const frame_t *f, const job_t *j,
                                                                    const uint8_t *end, int x_hi,
                                                                    const int dtype) {
    const vout_t c = vout(j);
    for (int oy = j->oy0; oy < j->oy1; oy++) {
        const uint8_t *r0 = f->src + (long)j->yi[2 * oy] * f->row_stride;
        const uint8_t *r1 = f->src + (long)j->yi[2 * oy + 1] * f->row_stride;
        if (oy + 1 < j->oy1) { /* the next output row's source rows, while this one computes */
            const uint8_t *n0 = f->src + (long)j->yi[2 * oy + 2] * f->row_stride;
            const uint8_t *n1 = f->src + (long)j->yi[2 * oy + 3] * f->row_stride;
            for (long b = 3L * j->xi[0]; b < 3L * x_hi; b += 64) {
                __builtin_prefetch(n0 + b);
                __builtin_prefetch(n1 + b);
            }
        }
        /* A 4-byte load reads one byte past a pixel: fine unless that runs off the frame,
         * which only the last row in memory can do. */
        if (r0 + 3L * x_hi + 1 <= end && r1 + 3L * x_hi + 1 <= end)
            bilinear_row(j, r0, r1, end, oy, dtype, 0, &c);
        else
            bilinear_row(j, r0, r1, end, oy, dtype, 1, &c);
    }
}

/* Not static: target_clones needs an external function (see el_axpy_f32). */
void el_bilinear_bytes(const frame_t *f, const job_t *j, const uint8_t *end, int x_hi);

__attribute__((target_clones("avx2", "default")))
void el_bilinear_bytes(const frame_t *f, const job_t *j, const uint8_t *end, int x_hi) {
    if (j->dtype == OUT_U8) bilinear_bytes_t(f, j, end, x_hi, OUT_U8);
    else if (j->dtype == OUT_I8) bilinear_bytes_t(f, j, end, x_hi, OUT_I8);
    else bilinear_bytes_t(f, j, end, x_hi, OUT_F32);
}

/* acc[i] += w * row[i]: the vertical pass for converted rows, vectorized across the row (no reduction
 * within one element, so vector width does not change any result). Not static: GCC
 * emits the target_clones dispatch (an ifunc) reliably only for external functions. */
void el_axpy_f32(float *restrict acc, const float *restrict row, float w, long n);

__attribute__((target_clones("avx2", "default")))
void el_axpy_f32(float *restrict acc, const float *restrict row, float w, long n) {
    for (long i = 0; i < n; i++) acc[i] += w * row[i];
}

/* acc[i] = sum over k of w[k] * rows[k][i], from zero in tap order, up to four taps per
 * pass over the row: each is a plain loop GCC vectorizes (AVX2 clone where the CPU has
 * it), and the additions per element stay in tap order. */
void el_vsum_u8(float *restrict acc, const uint8_t *const *rows, const float *w, int taps, long n);

#define VSUM_LOOP(EXPR)                                                                         \
    for (long i = 0; i < n; i++) acc[i] = EXPR;

__attribute__((target_clones("avx2", "default")))
void el_vsum_u8(float *restrict acc, const uint8_t *const *rows, const float *w, int taps, long n) {
    for (int k = 0; k < taps; k += 4) {
        int left = taps - k;
        const uint8_t *restrict r0 = rows[k], *restrict r1 = left > 1 ? rows[k + 1] : r0;
        const uint8_t *restrict r2 = left > 2 ? rows[k + 2] : r0, *restrict r3 = left > 3 ? rows[k + 3] : r0;
        float w0 = w[k], w1 = left > 1 ? w[k + 1] : 0, w2 = left > 2 ? w[k + 2] : 0, w3 = left > 3 ? w[k + 3] : 0;
        if (k == 0) {
            /* 0 + x == x exactly for these non-negative products, so the first pass assigns. */
            if (left == 1) VSUM_LOOP(w0 * r0[i])
            else if (left == 2) VSUM_LOOP(w0 * r0[i] + w1 * r1[i])
            else if (left == 3) VSUM_LOOP(w0 * r0[i] + w1 * r1[i] + w2 * r2[i])
            else VSUM_LOOP(w0 * r0[i] + w1 * r1[i] + w2 * r2[i] + w3 * r3[i])
        } else {
            if (left == 1) VSUM_LOOP(acc[i] + w0 * r0[i])
            else if (left == 2) VSUM_LOOP(acc[i] + w0 * r0[i] + w1 * r1[i])
            else if (left == 3) VSUM_LOOP(acc[i] + w0 * r0[i] + w1 * r1[i] + w2 * r2[i])
            else VSUM_LOOP(acc[i] + w0 * r0[i] + w1 * r1[i] + w2 * r2[i] + w3 * r3[i])
        }
    }
}

/* Many taps (area downscaling): sum whole source rows into a column buffer once per
 * output row, then the horizontal taps. Formats whose pixels are their bytes (RGB,
 * BGR, GRAY) are summed straight from the frame; the others are converted a row at a
 * time first (per pixel, before any sum, as the reference does). */
/* The horizontal taps of one output row over the column sums (3 channels, 4 lanes;
 * acc has slack so the fourth lane may read one float past a pixel). */
static inline __attribute__((always_inline)) void horizontal3(const job_t *j, const float *acc, int x_lo,
                                                              long at, const int dtype, const vout_t *c) {
    for (int ox = 0; ox < j->in_w; ox++, at += 3) {
        v4f o = {0, 0, 0, 0};
        const int32_t *xi = j->xi;
        const float *xw = j->xw;
        for (int t = j->xs[ox]; t < j->xs[ox + 1]; t++) {
            v4f col;
            memcpy(&col, acc + 3L * (xi[t] - x_lo), sizeof col);
            o += xw[t] * col;
        }
        if (ox + 1 < j->in_w) store3(j->dst, at, dtype, o, c, 1);
        else store3(j->dst, at, dtype, o, c, 0);
    }
}

static int area(const frame_t *f, const job_t *j, int x_lo, int x_hi, int raw) {
    long n = (long)(x_hi - x_lo) * j->out_c;
    const vout_t c = vout(j);
    int max_taps = 0;
    for (int oy = j->oy0; oy < j->oy1; oy++)
        if (j->ys[oy + 1] - j->ys[oy] > max_taps) max_taps = j->ys[oy + 1] - j->ys[oy];
    /* acc has 4 floats of slack: the horizontal pass loads a pixel as 4 lanes. */
    float *acc = (float *)malloc(sizeof(float) * ((size_t)n * 2 + 4));
    const uint8_t **rows = (const uint8_t **)malloc(sizeof(uint8_t *) * (size_t)(max_taps + 1));
    if (!acc || !rows) { free(acc); free(rows); return -1; }
    memset(acc + n, 0, sizeof(float) * 4);
    float *conv = acc + n + 4;
    int conv_y = -1;
    int bpp = f->fmt == FMT_GRAY ? 1 : 3;
    for (int oy = j->oy0; oy < j->oy1; oy++) {
        int k0 = j->ys[oy], taps = j->ys[oy + 1] - k0;
        if (raw) {
            for (int k = 0; k < taps; k++)
                rows[k] = f->src + (long)j->yi[k0 + k] * f->row_stride + (long)x_lo * bpp;
            el_vsum_u8(acc, rows, j->yw + k0, taps, n);
        } else {
            memset(acc, 0, sizeof(float) * (size_t)n);
            for (int k = k0; k < k0 + taps; k++) {
                int y = j->yi[k];
                if (y != conv_y) {
                    for (int x = x_lo; x < x_hi; x++) pixel(f, y, x, conv + (long)(x - x_lo) * j->out_c);
                    conv_y = y;
                }
                el_axpy_f32(acc, conv, j->yw[k], n);
            }
        }
        long at = ((long)(j->in_y + oy) * j->out_w + j->in_x) * j->out_c;
        if (j->out_c == 3) {
            switch (j->dtype) {
            case OUT_U8: horizontal3(j, acc, x_lo, at, OUT_U8, &c); break;
            case OUT_I8: horizontal3(j, acc, x_lo, at, OUT_I8, &c); break;
            default: horizontal3(j, acc, x_lo, at, OUT_F32, &c); break;
            }
            continue;
        }
        for (int ox = 0; ox < j->in_w; ox++, at += 1) {
            float o[3] = {0.0f, 0.0f, 0.0f};
            for (int t = j->xs[ox]; t < j->xs[ox + 1]; t++) o[0] += j->xw[t] * acc[j->xi[t] - x_lo];
            store_px(j->dst, at, j->dtype, 1, o, j->map, j->alpha, j->beta);
        }
    }
    free(acc);
    free(rows);
    return 0;
}

/* Any taps, sampled directly (nearest, or shapes the fast paths do not cover). */
static void generic(const frame_t *f, const job_t *j) {
    for (int oy = j->oy0; oy < j->oy1; oy++) {
        long at = ((long)(j->in_y + oy) * j->out_w + j->in_x) * j->out_c;
        for (int ox = 0; ox < j->in_w; ox++, at += j->out_c) {
            float o[3] = {0.0f, 0.0f, 0.0f};
            for (int t = j->xs[ox]; t < j->xs[ox + 1]; t++) {
                float s[3] = {0.0f, 0.0f, 0.0f};
                for (int k = j->ys[oy]; k < j->ys[oy + 1]; k++) {
                    float p[3];
                    pixel(f, j->yi[k], j->xi[t], p);
                    for (int c = 0; c < j->out_c; c++) s[c] += j->yw[k] * p[c];
                }
                for (int c = 0; c < j->out_c; c++) o[c] += j->xw[t] * s[c];
            }
            store_px(j->dst, at, j->dtype, j->out_c, o, j->map, j->alpha, j->beta);
        }
    }
}

static int all_two(const int32_t *start, int n) {
    for (int i = 0; i < n; i++)
        if (start[i + 1] - start[i] != 2) return 0;
    return 1;
}

static int run_rows(const frame_t *f, const job_t *j) {
    switch (j->kind) {
    case RUN_AREA: return area(f, j, j->x_lo, j->x_hi, j->raw);
    case RUN_BYTES: el_bilinear_bytes(f, j, j->end, j->x_hi); return 0;
    case RUN_BILINEAR: bilinear_by_fmt[f->fmt](*f, j); return 0;
    default: generic(f, j); return 0;
    }
}

typedef struct {
    const frame_t *f;
    job_t job;
    int status;
} task_t;

static void *run_task(void *arg) {
    task_t *t = (task_t *)arg;
    t->status = run_rows(t->f, &t->job);
    return NULL;
}

#define MAX_THREADS 8

int el_preprocess(const uint8_t *src, long row_stride, const uint8_t *uv, long uv_stride, int fmt,
                  int out_h, int out_w, int out_c, int out_dtype, void *dst,
                  int in_x, int in_y, int in_w, int in_h,
                  const int32_t *ys, const int32_t *yi, const float *yw,
                  const int32_t *xs, const int32_t *xi, const float *xw,
                  const float *alpha, const float *beta, const void *pad, int swap_rb,
                  int x_lo, int x_hi, const uint8_t *src_end, int threads) {
    /* Letterbox border: rows above and below, then the left and right margins. */
    fill_pad(dst, out_dtype, 0, (long)in_y * out_w, out_c, pad);
    fill_pad(dst, out_dtype, (long)(in_y + in_h) * out_w, (long)(out_h - in_y - in_h) * out_w, out_c, pad);
    for (int oy = 0; oy < in_h; oy++) {
        long base = (long)(in_y + oy) * out_w;
        fill_pad(dst, out_dtype, base, in_x, out_c, pad);
        fill_pad(dst, out_dtype, base + in_x + in_w, out_w - in_x - in_w, out_c, pad);
    }
    job_t j = {dst, out_w, out_c, out_dtype, in_x, in_y, in_w, in_h, ys, yi, xs, xi, yw, xw, alpha, beta,
               {0, 1, 2}, 0, in_h, RUN_GENERIC, x_lo, x_hi, 0, src_end};
    /* Sums are kept in RGB order (or the source's byte order when summing raw bytes);
     * the map picks the output's channel order when storing. */
    int raw = ((fmt == FMT_RGB || fmt == FMT_BGR) && out_c == 3) || (fmt == FMT_GRAY && out_c == 1);
    int src_bgr = raw && fmt == FMT_BGR;
    frame_t f = {src, row_stride, uv, uv_stride, fmt, out_c};
    int swap = out_c == 3 && swap_rb;
    if ((long)xs[in_w] > (long)(x_hi - x_lo)) {
        j.kind = RUN_AREA;
        j.raw = raw;
        swap = out_c == 3 && (swap_rb ^ src_bgr);
    } else if (all_two(ys, in_h) && all_two(xs, in_w)) {
        j.kind = raw && out_c == 3 ? RUN_BYTES : RUN_BILINEAR;
        if (j.kind == RUN_BYTES) swap = swap_rb ^ src_bgr;
    }
    if (swap) { j.map[0] = 2; j.map[2] = 0; }
    /* Split the output rows over threads: they write disjoint rows, and a camera frame is
     * read from memory faster by two cores than by one. Small outputs are not worth it. */
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads < 2 || in_h < 64) return run_rows(&f, &j);
    task_t tasks[MAX_THREADS];
    pthread_t ids[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int t = 0; t < threads; t++) {
        tasks[t].f = &f;
        tasks[t].job = j;
        tasks[t].job.oy0 = (int)((long)in_h * t / threads);
        tasks[t].job.oy1 = (int)((long)in_h * (t + 1) / threads);
        tasks[t].status = 0;
    }
    for (int t = 1; t < threads; t++)
        started[t] = pthread_create(&ids[t], NULL, run_task, &tasks[t]) == 0;
    run_task(&tasks[0]);
    int status = tasks[0].status;
    for (int t = 1; t < threads; t++) {
        if (started[t]) pthread_join(ids[t], NULL);
        else run_task(&tasks[t]); /* no thread to be had: do its rows here */
        status |= tasks[t].status;
    }
    return status;
}

static int better(const float *s, int64_t i, int64_t j) { return s[i] > s[j] || (s[i] == s[j] && i < j); }

/* The k best by insertion into a short sorted list: one pass, no allocation, no shared
 * state (cffi releases the GIL around calls). The wrapper sends large k to numpy's sort. */
int el_topk(const float *scores, long n, int k, int64_t *out) {
    if (k > n) k = (int)n;
    int filled = 0;
    for (int64_t i = 0; i < n; i++) {
        if (filled == k && !better(scores, i, out[k - 1])) continue;
        int p = filled < k ? filled++ : k - 1;
        while (p > 0 && better(scores, i, out[p - 1])) { out[p] = out[p - 1]; p--; }
        out[p] = i;
    }
    return k;
}

static inline float box_iou(const float *a, const float *b) {
    float ih = fminf(a[2], b[2]) - fmaxf(a[0], b[0]);
    float iw = fminf(a[3], b[3]) - fmaxf(a[1], b[1]);
    ih = ih > 0.0f ? ih : 0.0f;
    iw = iw > 0.0f ? iw : 0.0f;
    float inter = ih * iw;
    float uni = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    return uni > 0.0f ? inter / uni : 0.0f;
}

/* Greedy NMS over candidates already in score order (the caller sorts: numpy's sort
 * beats qsort with a comparator callback). */
long el_nms(const float *boxes, const int32_t *classes, const int64_t *order, long candidates,
            float iou_threshold, int max_detections, int64_t *keep) {
    long kept = 0;
    for (long c = 0; c < candidates && kept < max_detections; c++) {
        int64_t i = order[c];
        int suppressed = 0;
        for (long k = 0; k < kept && !suppressed; k++) {
            int64_t j = keep[k];
            if (classes && classes[i] != classes[j]) continue;
            suppressed = box_iou(boxes + 4 * i, boxes + 4 * j) > iou_threshold;
        }
        if (!suppressed) keep[kept++] = i;
    }
    return kept;
}

void el_keypoints(const float *hm, int h, int w, int k, float *out) {
    for (int c = 0; c < k; c++) {
        long best = 0;
        float top = hm[c];
        for (long p = 1; p < (long)h * w; p++) {
            float v = hm[p * k + c];
            if (v > top) { top = v; best = p; }
        }
        int y = (int)(best / w), x = (int)(best % w);
        float fy = (float)y, fx = (float)x;
        if (x > 0 && x < w - 1) {
            float d = hm[((long)y * w + x + 1) * k + c] - hm[((long)y * w + x - 1) * k + c];
            fx += 0.25f * (float)((d > 0.0f) - (d < 0.0f));
        }
        if (y > 0 && y < h - 1) {
            float d = hm[((long)(y + 1) * w + x) * k + c] - hm[((long)(y - 1) * w + x) * k + c];
            fy += 0.25f * (float)((d > 0.0f) - (d < 0.0f));
        }
        out[3 * c] = (fy + 0.5f) / (float)h;
        out[3 * c + 1] = (fx + 0.5f) / (float)w;
        out[3 * c + 2] = top;
    }
}

void el_quantize_int8(const float *v, long n, int8_t *out) {
    for (long i = 0; i < n; i++) {
        float q = roundf(v[i] * 127.0f);
        out[i] = (int8_t)(q < -128.0f ? -128.0f : (q > 127.0f ? 127.0f : q));
    }
}
