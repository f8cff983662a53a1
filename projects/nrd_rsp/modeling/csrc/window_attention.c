/* The RSE's window attention without autograd (docs/RSP.md, Eq. 1-3), float32, in one pass per
 * fine pixel and head: the k*k logits q.k + bias, their softmax over the positions inside the
 * coarse map, and the weighted sum of the values. Called by nrd_rsp.modeling.window_attention
 * (which computes the projections and checks the arguments) with the addresses of contiguous
 * float32 tensors:
 *   q, out: [N, H, W, G*d] (out may be q: a pixel's queries are read before it is written);
 *   kv:     [N, h', w', G, 2, d] (keys, then values, of each head);
 *   bias:   [G, 4, k*k] (parity 2 * (y % 2) + x % 2 of the fine pixel; offset i * k + j).
 * Fine pixel (y, x) reads the coarse pixels (y / 2 + i - k / 2, x / 2 + j - k / 2). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>

#define MAX_WINDOW 15
#define MAX_HEAD_DIM 1024

static float dot(const float *a, const float *b, Py_ssize_t d) {
  float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f}; /* 8 lanes: vectorised */
  Py_ssize_t t = 0;
  for (; t + 8 <= d; t += 8)
    for (int l = 0; l < 8; l++) acc[l] += a[t + l] * b[t + l];
  float sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; t < d; t++) sum += a[t] * b[t];
  return sum;
}

/* One fine pixel (y, x) of image n, head g: queries qg [d] -> og [d]. */
static void attend(const float *qg, const float *kv, const float *bias_g, float *og,
                   Py_ssize_t y, Py_ssize_t x, Py_ssize_t hc, Py_ssize_t wc, Py_ssize_t G,
                   Py_ssize_t g, Py_ssize_t d, Py_ssize_t k) {
  float q[MAX_HEAD_DIM], weight[MAX_WINDOW * MAX_WINDOW];
  const float *value[MAX_WINDOW * MAX_WINDOW];
  const Py_ssize_t r = k / 2, parity = 2 * (y % 2) + x % 2;
  memcpy(q, qg, (size_t)d * sizeof(float));
  float top = -INFINITY, sum = 0.f;
  for (Py_ssize_t i = 0; i < k; i++)
    for (Py_ssize_t j = 0; j < k; j++) {
      const Py_ssize_t yy = y / 2 + i - r, xx = x / 2 + j - r, m = i * k + j;
      value[m] = NULL;
      if (yy < 0 || yy >= hc || xx < 0 || xx >= wc) continue; /* outside the coarse map */
      const float *key = kv + ((yy * wc + xx) * G + g) * 2 * d;
      weight[m] = dot(q, key, d) + bias_g[parity * k * k + m];
      value[m] = key + d;
      if (weight[m] > top) top = weight[m];
    }
  for (Py_ssize_t m = 0; m < k * k; m++)
    if (value[m]) sum += (weight[m] = expf(weight[m] - top));
  for (Py_ssize_t t = 0; t < d; t++) og[t] = 0.f;
  for (Py_ssize_t m = 0; m < k * k; m++) {
    if (!value[m]) continue;
    const float w = weight[m] / sum;
    for (Py_ssize_t t = 0; t < d; t++) og[t] += w * value[m][t];
  }
}

static PyObject *window_attention(PyObject *self, PyObject *args) {
  Py_ssize_t q, kv, bias, out, n, h, w, hc, wc, G, d, k;
  if (!PyArg_ParseTuple(args, "nnnnnnnnnnnn", &q, &kv, &bias, &out, &n, &h, &w, &hc, &wc, &G,
                        &d, &k))
    return NULL;
  if (k < 1 || k > MAX_WINDOW || d < 1 || d > MAX_HEAD_DIM) {
    PyErr_SetString(PyExc_ValueError, "window_attention: window or head size out of range");
    return NULL;
  }
  Py_BEGIN_ALLOW_THREADS
  for (Py_ssize_t b = 0; b < n; b++)
    for (Py_ssize_t y = 0; y < h; y++)
      for (Py_ssize_t x = 0; x < w; x++) {
        const Py_ssize_t pixel = ((b * h + y) * w + x) * G * d;
        const float *kvb = (const float *)kv + b * hc * wc * G * 2 * d;
        for (Py_ssize_t g = 0; g < G; g++)
          attend((const float *)q + pixel + g * d, kvb, (const float *)bias + g * 4 * k * k,
                 (float *)out + pixel + g * d, y, x, hc, wc, G, g, d, k);
      }
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"window_attention", window_attention, METH_VARARGS,
     "window_attention(q, kv, bias, out, N, H, W, h', w', G, d, k): addresses and sizes."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_window_attention", NULL, -1, methods};

PyMODINIT_FUNC PyInit__window_attention(void) { return PyModule_Create(&module); }
