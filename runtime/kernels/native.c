/* edgeloop native kernels. The numpy reference (reference.py) is the specification:
 * every float operation here happens in float32, in the order written there, and
 * the build disables FMA contraction so results match it bit for bit. */
#include "native.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { FMT_RGB, FMT_BGR, FMT_RGBA, FMT_GRAY, FMT_YUYV, FMT_NV12 };
enum { OUT_U8, OUT_I8, OUT_F32 };

typedef struct {
    const uint8_t *src;
    long row_stride;
    const uint8_t *uv;
    long uv_stride;
    int fmt;
    int out_c;
    int swap_rb;
} frame_t;

static inline float clamp255(float v) { return v < 0.0f ? 0.0f : (v > 255.0f ? 255.0f : v); }

static inline void yuv_rgb(float y, float u, float v, float rgb[3]) {
    float c = (y - 16.0f) * 1.164f;
    float d = u - 128.0f;
    float e = v - 128.0f;
    rgb[0] = clamp255(c + 1.596f * e);
    rgb[1] = clamp255(c - 0.392f * d - 0.813f * e);
    rgb[2] = clamp255(c + 2.017f * d);
}

/* The value(s) of source pixel (y, x) as the output wants them: RGB/BGR or luma. */
static inline void pixel(const frame_t *f, int y, int x, float out[3]) {
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
    } else if (f->swap_rb) {
        out[0] = rgb[2]; out[1] = rgb[1]; out[2] = rgb[0];
    } else {
        out[0] = rgb[0]; out[1] = rgb[1]; out[2] = rgb[2];
    }
}

static inline void store(void *dst, long i, int dtype, float v) {
    if (dtype == OUT_F32) { ((float *)dst)[i] = v; return; }
    float q = roundf(v); /* half away from zero, as the reference */
    if (dtype == OUT_U8) {
        ((uint8_t *)dst)[i] = (uint8_t)(q < 0.0f ? 0.0f : (q > 255.0f ? 255.0f : q));
    } else {
        ((int8_t *)dst)[i] = (int8_t)(q < -128.0f ? -128.0f : (q > 127.0f ? 127.0f : q));
    }
}

static void fill_pad(void *dst, int dtype, long from, long count, int c_n, const void *pad) {
    size_t size = dtype == OUT_F32 ? 4 : 1;
    for (long p = from; p < from + count; p++)
        memcpy((char *)dst + (size_t)p * c_n * size, pad, size * c_n);
}

int el_preprocess(const uint8_t *src, long row_stride, const uint8_t *uv, long uv_stride, int fmt,
                  int out_h, int out_w, int out_c, int out_dtype, void *dst,
                  int in_x, int in_y, int in_w, int in_h,
                  const int32_t *ys, const int32_t *yi, const float *yw,
                  const int32_t *xs, const int32_t *xi, const float *xw,
                  const float *alpha, const float *beta, const void *pad, int swap_rb,
                  int x_lo, int x_hi) {
    frame_t f = {src, row_stride, uv, uv_stride, fmt, out_c, swap_rb};
    /* Letterbox border: rows above and below, then the left and right margins. */
    fill_pad(dst, out_dtype, 0, (long)in_y * out_w, out_c, pad);
    fill_pad(dst, out_dtype, (long)(in_y + in_h) * out_w, (long)(out_h - in_y - in_h) * out_w, out_c, pad);
    for (int oy = 0; oy < in_h; oy++) {
        long base = (long)(in_y + oy) * out_w;
        fill_pad(dst, out_dtype, base, in_x, out_c, pad);
        fill_pad(dst, out_dtype, base + in_x + in_w, out_w - in_x - in_w, out_c, pad);
    }
    /* Many horizontal taps (area downscaling): filter whole source rows into a column
     * buffer once per output row. Few taps (bilinear, nearest): sample directly. Both
     * compute the same sums in the same order. */
    long x_taps = xs[in_w];
    int buffered = x_taps > (long)(x_hi - x_lo);
    float *cols = NULL;
    if (buffered) {
        cols = (float *)malloc(sizeof(float) * (size_t)(x_hi - x_lo) * out_c);
        if (!cols) return -1;
    }
    for (int oy = 0; oy < in_h; oy++) {
        long row_out = ((long)(in_y + oy) * out_w + in_x) * out_c;
        if (buffered) {
            for (int x = x_lo; x < x_hi; x++) {
                float acc[3] = {0.0f, 0.0f, 0.0f};
                for (int k = ys[oy]; k < ys[oy + 1]; k++) {
                    float p[3];
                    pixel(&f, yi[k], x, p);
                    for (int c = 0; c < out_c; c++) acc[c] += yw[k] * p[c];
                }
                for (int c = 0; c < out_c; c++) cols[(long)(x - x_lo) * out_c + c] = acc[c];
            }
        }
        for (int ox = 0; ox < in_w; ox++) {
            float o[3] = {0.0f, 0.0f, 0.0f};
            for (int j = xs[ox]; j < xs[ox + 1]; j++) {
                float t[3] = {0.0f, 0.0f, 0.0f};
                if (buffered) {
                    for (int c = 0; c < out_c; c++) t[c] = cols[(long)(xi[j] - x_lo) * out_c + c];
                } else {
                    for (int k = ys[oy]; k < ys[oy + 1]; k++) {
                        float p[3];
                        pixel(&f, yi[k], xi[j], p);
                        for (int c = 0; c < out_c; c++) t[c] += yw[k] * p[c];
                    }
                }
                for (int c = 0; c < out_c; c++) o[c] += xw[j] * t[c];
            }
            for (int c = 0; c < out_c; c++)
                store(dst, row_out + (long)ox * out_c + c, out_dtype, o[c] * alpha[c] + beta[c]);
        }
    }
    free(cols);
    return 0;
}

void el_dequantize(const void *q, int dtype, long n, float scale, int zero_point, float *out) {
    float zp = (float)zero_point;
    if (dtype == OUT_U8) {
        for (long i = 0; i < n; i++) out[i] = ((float)((const uint8_t *)q)[i] - zp) * scale;
    } else {
        for (long i = 0; i < n; i++) out[i] = ((float)((const int8_t *)q)[i] - zp) * scale;
    }
}

void el_softmax(const float *x, long rows, long n, float *out) {
    for (long r = 0; r < rows; r++) {
        const float *in = x + r * n;
        float *o = out + r * n;
        float m = in[0];
        for (long i = 1; i < n; i++) m = in[i] > m ? in[i] : m;
        double sum = 0.0;
        for (long i = 0; i < n; i++) { o[i] = expf(in[i] - m); sum += o[i]; }
        float s = (float)sum;
        for (long i = 0; i < n; i++) o[i] = o[i] / s;
    }
}

/* Score order: higher first, then lower index. */
static const float *g_scores;
static int by_score(const void *a, const void *b) {
    int64_t i = *(const int64_t *)a, j = *(const int64_t *)b;
    float si = g_scores[i], sj = g_scores[j];
    if (si != sj) return si > sj ? -1 : 1;
    return i < j ? -1 : (i > j);
}

static int better(const float *s, int64_t i, int64_t j) { return s[i] > s[j] || (s[i] == s[j] && i < j); }

int el_topk(const float *scores, long n, int k, int64_t *out) {
    if (k > n) k = (int)n;
    if (k <= 64) { /* insertion into a short sorted list: one pass, no allocation */
        int filled = 0;
        for (int64_t i = 0; i < n; i++) {
            if (filled == k && !better(scores, i, out[k - 1])) continue;
            int p = filled < k ? filled++ : k - 1;
            while (p > 0 && better(scores, i, out[p - 1])) { out[p] = out[p - 1]; p--; }
            out[p] = i;
        }
        return k;
    }
    int64_t *order = (int64_t *)malloc(sizeof(int64_t) * (size_t)n);
    if (!order) return -1;
    for (long i = 0; i < n; i++) order[i] = i;
    g_scores = scores; /* callers hold the GIL: no concurrent use of this global */
    qsort(order, (size_t)n, sizeof(int64_t), by_score);
    memcpy(out, order, sizeof(int64_t) * (size_t)k);
    free(order);
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

long el_nms(const float *boxes, const float *scores, const int32_t *classes, long n, float iou_threshold,
            float score_threshold, int max_detections, int64_t *keep) {
    int64_t *order = (int64_t *)malloc(sizeof(int64_t) * (size_t)(n > 0 ? n : 1));
    if (!order) return -1;
    long candidates = 0;
    for (long i = 0; i < n; i++)
        if (scores[i] > score_threshold) order[candidates++] = i;
    g_scores = scores;
    qsort(order, (size_t)candidates, sizeof(int64_t), by_score);
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
    free(order);
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

void el_l2_normalize(const float *v, long n, float *out) {
    double sum = 0.0;
    for (long i = 0; i < n; i++) sum += (double)v[i] * (double)v[i];
    float norm = (float)sqrt(sum);
    for (long i = 0; i < n; i++) out[i] = norm > 0.0f ? v[i] / norm : v[i];
}

void el_quantize_int8(const float *v, long n, int8_t *out) {
    for (long i = 0; i < n; i++) {
        float q = roundf(v[i] * 127.0f);
        out[i] = (int8_t)(q < -128.0f ? -128.0f : (q > 127.0f ? 127.0f : q));
    }
}

void el_binarize(const float *v, long n, uint8_t *out) {
    memset(out, 0, (size_t)((n + 7) / 8));
    for (long i = 0; i < n; i++)
        if (v[i] > 0.0f) out[i >> 3] |= (uint8_t)(0x80u >> (i & 7));
}
