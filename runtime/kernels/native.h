/* Declarations of the native kernels; build_native.py feeds this to cffi's cdef. */
#include <stdint.h>

int el_preprocess(const uint8_t *src, long row_stride, const uint8_t *uv, long uv_stride, int fmt,
                  int out_h, int out_w, int out_c, int out_dtype, void *dst,
                  int in_x, int in_y, int in_w, int in_h,
                  const int32_t *ys, const int32_t *yi, const float *yw,
                  const int32_t *xs, const int32_t *xi, const float *xw,
                  const float *alpha, const float *beta, const void *pad, int swap_rb,
                  int x_lo, int x_hi, const uint8_t *src_end, int threads);
int el_topk(const float *scores, long n, int k, int64_t *out);
long el_nms(const float *boxes, const int32_t *classes, const int64_t *order, long candidates,
            float iou_threshold, int max_detections, int64_t *keep);
void el_keypoints(const float *hm, int h, int w, int k, float *out);
void el_quantize_int8(const float *v, long n, int8_t *out);
