/* ByteTracker.update in C: the same frame step as pipeline/runtime/bytetrack.py's NumPy
 * code, which stays the reference (and the fallback where no C compiler built this).
 * tests/test_tracking.py runs both on the same sequences and asks for the same tracks.
 *
 * Why C: at 50 objects a frame the NumPy step is ~150 array calls of a microsecond or
 * two each, and in the runner, with the interpreters evicting its caches, it cost 7-9 %
 * of the 2-thread frame (issue 16 asks < 5 %). The same arithmetic here is one call.
 *
 * Plain C with no Python headers, loaded with ctypes (bytetrack.py's _load_native): a
 * C compiler is all the build needs. Every step mirrors a NumPy line of bytetrack.py,
 * in the same precision (float32 where the NumPy code is float32) and order, with
 * NumPy's NaN rules for min and max, so the two give the same tracks; comments name the
 * Python function each part follows. One place may differ in the last bits: after a
 * frame gap NumPy's prediction is a matrix product, which BLAS may do with fused
 * multiply-adds; no test sequence turned that into a different track.
 *
 * Layout (bytetrack.py's): the state t is field-major, t[f * cap + k] is field f of
 * track k; votes[k * nc + c] counts track k's detections of class c. */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef _WIN32 /* exported for ctypes; and setuptools links a Python module, which must have its init */
#define EXPORT __declspec(dllexport)
EXPORT void *PyInit__bytetrack(void) { return 0; }
#else
#define EXPORT __attribute__((visibility("default")))
#endif

#define POS 0
#define VEL 4
#define PP 8
#define PV 12
#define VV 16
#define ID 20
#define STATE 21
#define CONFIRMED 22
#define LAST 23
#define START 24
#define SCORE 25
#define MAX_CLASSES (1 << 24) /* class ids from 0 to below this: votes has a column each */
#define TRACKED 1.0
#define LOST 2.0

/* The version of bt_update's arguments; bytetrack.py loads no other (a stale build). */
EXPORT int64_t bt_version(void) { return 2; }

/* _SP = 1/20, _SV = 1/160; per dimension (cx, cy, aspect, height) variance = h^2 x H + F,
 * where the aspect ratio (dimension 2) has a constant F and no H */
#define SP2 ((1.0 / 20) * (1.0 / 20))
#define SV2 ((1.0 / 160) * (1.0 / 160))
#define P0P ((2 * (1.0 / 20)) * (2 * (1.0 / 20)))
#define P0V ((10 * (1.0 / 160)) * (10 * (1.0 / 160)))
static const double QPOS_H[4] = {SP2, SP2, 0, SP2}, QPOS_F[4] = {0, 0, 1e-4, 0};
static const double QVEL_H[4] = {SV2, SV2, 0, SV2}, QVEL_F[4] = {0, 0, 1e-10, 0};
static const double R_H[4] = {SP2, SP2, 0, SP2}, R_F[4] = {0, 0, 1e-2, 0};
static const double P0POS_H[4] = {P0P, P0P, 0, P0P}, P0POS_F[4] = {0, 0, 1e-4, 0};
static const double P0VEL_H[4] = {P0V, P0V, 0, P0V}, P0VEL_F[4] = {0, 0, 1e-10, 0};

/* np.minimum and np.maximum: a NaN on either side gives NaN (C's a < b ? a : b would
 * drop it, and a NaN box's IoU would become a perfect match) */
static inline float minf(float a, float b) { return a < b || a != a ? a : b; }
static inline float maxf(float a, float b) { return a > b || a != a ? a : b; }
static inline double mind(double a, double b) { return a < b || a != a ? a : b; }
static inline double maxd(double a, double b) { return a > b || a != a ? a : b; }

typedef struct {
    double cost;
    int idx;
} Pair;

static int by_cost(const void *a, const void *b) {
    const Pair *p = a, *q = b;
    if (p->cost < q->cost) return -1;
    if (p->cost > q->cost) return 1;
    return (p->idx > q->idx) - (p->idx < q->idx); /* ties in row-major order: a stable sort's */
}

/* match(): greedy min-cost matching of rows[] x cols[] (indices into the n x m problem),
 * pairs in order of cost, each row and column once, costs above limit never. cost[] holds
 * the nr x nc part's costs, row-major. Writes matched (row, col) indices; returns how many. */
static int greedy(const double *cost, const int *rows, int nr, const int *cols, int nc, double limit,
                  Pair *pairs, char *used_r, char *used_c, int *out_r, int *out_c) {
    int np_ = 0, k = 0;
    for (int i = 0; i < nr * nc; i++)
        if (cost[i] <= limit) pairs[np_].cost = cost[i], pairs[np_++].idx = i; /* never NaN */
    if (!np_) return 0;
    qsort(pairs, np_, sizeof(Pair), by_cost);
    memset(used_r, 0, nr);
    memset(used_c, 0, nc);
    for (int p = 0; p < np_; p++) {
        int a = pairs[p].idx / nc, b = pairs[p].idx % nc;
        if (!used_r[a] && !used_c[b]) used_r[a] = used_c[b] = 1, out_r[k] = rows[a], out_c[k++] = cols[b];
    }
    return k;
}

/* _xyxy: (cx, cy, aspect, height) of track k -> x1 y1 x2 y2 in double */
static void xyxy(const double *t, long cap, long k, double *o) {
    double hw = t[2 * cap + k] * 0.5 * t[3 * cap + k], hh = t[3 * cap + k] * 0.5;
    o[0] = t[k] - hw, o[1] = t[cap + k] - hh, o[2] = t[k] + hw, o[3] = t[cap + k] + hh;
}

/* the next 8-byte aligned piece of a scratch block */
static void *take(char **w, size_t bytes) {
    void *at = *w;
    *w += (bytes + 7) & ~(size_t)7;
    return at;
}

static int argmax(const double *v, long n) {
    int best = 0;
    for (int c = 1; c < n; c++)
        if (v[c] > v[best]) best = c;
    return best;
}

/* One frame (ByteTracker.update, _associate, _refind, _apply, _drop_duplicates).
 *
 * t: the state, nf fields x cap columns, *n of them tracks; room for *n + m.
 * votes: cap x nc. boxes: m x 4 float32 x1 y1 x2 y2; scores, classes: m.
 * thr ... buffer: ByteTracker's track_threshold, match_iou, low_threshold, refind, track_buffer.
 * next_id: the next track id (updated). Outputs, room for *n + m each: the confirmed
 * tracked tracks' ids, boxes (float32 x1 y1 x2 y2), scores, classes, centres (cx, cy),
 * and slots (their columns in the state after this frame).
 * Returns how many tracks are output; before any change, -1 when out of memory, -2 for
 * a class id outside 0 .. MAX_CLASSES - 1, and -3 - c when votes needs columns up to
 * class c (the caller widens it and calls again). */
EXPORT int64_t bt_update(double *t, int64_t cap, int64_t nf, int64_t *n_io, double *votes, int64_t nc, const float *boxes,
                         const double *scores_in, const int64_t *classes_in, int64_t m_in, int64_t frame, int64_t first,
                         double dt, double thr, double match_iou, double low, double refind, double buffer, double *next_id,
                         int64_t *out_ids, float *out_boxes, double *out_scores, int64_t *out_classes, double *out_centres,
                         int64_t *out_slots) {
    const int n = (int)*n_io;
    int m = 0;
    /* scratch, one block: n x m IoUs, costs and pairs; per detection and per track lists */
    size_t nm = (size_t)(n > 0 ? n : 1) * (size_t)(m_in > 0 ? m_in : 1), nn = (size_t)n + (size_t)m_in + 1;
    size_t bytes = nm * (sizeof(float) + sizeof(double) + sizeof(Pair)) + nn * (4 * sizeof(float) + sizeof(double)) +
                   nn * 9 * sizeof(int) + nn * 4 + 32 * 8;
    char *mem = malloc(bytes), *w = mem;
    if (!mem) return -1;
    float *iou = take(&w, nm * sizeof(float));
    double *cost = take(&w, nm * sizeof(double));
    Pair *pairs = take(&w, nm * sizeof(Pair));
    float *b = take(&w, 4 * nn * sizeof(float)); /* coordinate-major: b[c * m_in + j] */
    double *sc = take(&w, nn * sizeof(double));
    int *cl = take(&w, nn * sizeof(int)), *free_d = take(&w, nn * sizeof(int)), *dcols = take(&w, nn * sizeof(int));
    int *trows = take(&w, nn * sizeof(int)), *hit_t = take(&w, nn * sizeof(int)), *hit_d = take(&w, nn * sizeof(int));
    int *mr = take(&w, nn * sizeof(int)), *mc = take(&w, nn * sizeof(int)), *free_t = take(&w, nn * sizeof(int));
    char *remove = take(&w, nn), *lostnow = take(&w, nn), *used_r = take(&w, nn), *used_c = take(&w, nn);

    /* update(): below both thresholds a detection takes part in no association */
    double floor_ = low < thr ? low : thr;
    int64_t top = -1;
    for (int j = 0; j < m_in; j++) {
        const float *q = boxes + 4 * j;
        float w_ = q[2] - q[0], h_ = q[3] - q[1]; /* finite only: an inf coordinate gives inf or NaN */
        if (w_ > 0 && h_ > 0 && w_ < INFINITY && h_ < INFINITY && scores_in[j] > floor_) {
            if (classes_in[j] < 0 || classes_in[j] >= nc) { /* votes[k][class] must exist */
                if (classes_in[j] < 0 || classes_in[j] >= MAX_CLASSES) return free(mem), -2;
                top = classes_in[j] > top ? classes_in[j] : top;
            }
            for (int c = 0; c < 4; c++) b[c * m_in + m] = q[c];
            sc[m] = scores_in[j], cl[m] = (int)classes_in[j], m++;
        }
    }
    if (top >= 0) return free(mem), -3 - top;
    const int64_t M = m_in; /* b's row stride */
    int any_conf = 0, every_conf = 1, every_tracked = 1;
    for (int k = 0; k < n; k++) {
        int conf = t[CONFIRMED * cap + k] > 0, tracked = t[STATE * cap + k] == TRACKED;
        any_conf |= conf, every_conf &= conf, every_tracked &= tracked;
    }
    /* _predict: the confirmed tracks, dt frames on; a lost track stops growing */
    if (any_conf) {
        for (int k = 0; k < n; k++) {
            if (!every_tracked && t[STATE * cap + k] != TRACKED) t[7 * cap + k] = 0;
            if (t[CONFIRMED * cap + k] <= 0) continue;
            double h2 = t[3 * cap + k] * t[3 * cap + k];
            for (int d = 0; d < 4; d++) {
                double qp = h2 * QPOS_H[d] + QPOS_F[d], qv = h2 * QVEL_H[d] + QVEL_F[d], qpv = h2 * 0.0 + 0.0;
                if (dt != 1.0) qp *= dt, qv *= dt, qpv *= dt;
                double *pp = t + (PP + d) * cap + k, *pv = t + (PV + d) * cap + k, *vv = t + (VV + d) * cap + k;
                double npp = qp + (*pp + 2 * dt * *pv + dt * dt * *vv), npv = qpv + (0.0 * *pp + *pv + dt * *vv);
                double nvv = qv + (0.0 * *pp + 0.0 * *pv + *vv);
                *pp = npp, *pv = npv, *vv = nvv;
            }
            for (int d = 0; d < 4; d++) t[(POS + d) * cap + k] += dt == 1.0 ? t[(VEL + d) * cap + k] : dt * t[(VEL + d) * cap + k];
        }
    }
    /* _iou(_xyxy(t, float32), b): every track x detection, in float32 */
    for (int k = 0; k < n; k++) {
        double cx = t[k], cy = t[cap + k], hw = t[2 * cap + k] * 0.5 * t[3 * cap + k], hh = t[3 * cap + k] * 0.5;
        float a0 = (float)(cx - hw), a1 = (float)(cy - hh), a2 = (float)(cx + hw), a3 = (float)(cy + hh);
        float sa = (a2 - a0) * (a3 - a1);
        for (int j = 0; j < m; j++) {
            float b0 = b[j], b1 = b[M + j], b2 = b[2 * M + j], b3 = b[3 * M + j];
            float iw = maxf(minf(a2, b2) - maxf(a0, b0), 0), ih = maxf(minf(a3, b3) - maxf(a1, b1), 0);
            float inter = iw * ih, uni = sa + (b2 - b0) * (b3 - b1);
            uni -= inter;
            uni = maxf(uni, 1e-9f);
            iou[k * m + j] = inter / uni;
        }
    }
    int nr, nc_, nhit = 0;
    for (int k = 0; k < n; k++) free_t[k] = 1;
    for (int j = 0; j < m; j++) free_d[j] = 1;
    /* _associate 1: every confirmed track against the high-score detections, 1 - IoU x score */
    nr = nc_ = 0;
    for (int k = 0; k < n; k++)
        if (t[CONFIRMED * cap + k] > 0) trows[nr++] = k;
    for (int j = 0; j < m; j++)
        if (sc[j] > thr) dcols[nc_++] = j;
    for (int a = 0; a < nr; a++)
        for (int c = 0; c < nc_; c++) cost[a * nc_ + c] = 1 - (double)iou[trows[a] * m + dcols[c]] * sc[dcols[c]];
    int k1 = nr && nc_ ? greedy(cost, trows, nr, dcols, nc_, 1 - match_iou, pairs, used_r, used_c, mr, mc) : 0;
    for (int i = 0; i < k1; i++) free_t[mr[i]] = free_d[mc[i]] = 0, hit_t[nhit] = mr[i], hit_d[nhit++] = mc[i];
    /* 2: tracks still tracked against the low-score ones, 1 - IoU (float32); the rest is newly lost */
    nr = nc_ = 0;
    for (int k = 0; k < n; k++) {
        lostnow[k] = free_t[k] && t[CONFIRMED * cap + k] > 0 && t[STATE * cap + k] == TRACKED;
        if (lostnow[k]) trows[nr++] = k;
    }
    for (int j = 0; j < m; j++)
        if (!(sc[j] > thr)) dcols[nc_++] = j;
    for (int a = 0; a < nr; a++)
        for (int c = 0; c < nc_; c++) cost[a * nc_ + c] = (double)(1.0f - iou[trows[a] * m + dcols[c]]);
    int k2 = nr && nc_ ? greedy(cost, trows, nr, dcols, nc_, 0.5, pairs, used_r, used_c, mr, mc) : 0;
    for (int i = 0; i < k2; i++) lostnow[mr[i]] = 0, free_d[mc[i]] = 0, hit_t[nhit] = mr[i], hit_d[nhit++] = mc[i];
    /* 4 (_refind): lost tracks within the buffer against the high detections left, by distance */
    if (!every_tracked && refind) {
        nr = nc_ = 0;
        for (int k = 0; k < n; k++)
            if (free_t[k] && t[CONFIRMED * cap + k] > 0 && t[STATE * cap + k] != TRACKED &&
                frame - t[LAST * cap + k] <= buffer)
                trows[nr++] = k;
        for (int j = 0; j < m; j++)
            if (sc[j] > thr && free_d[j]) dcols[nc_++] = j;
        if (nr && nc_) {
            for (int a = 0; a < nr; a++) {
                int k = trows[a];
                double h = maxd(t[3 * cap + k], 1e-6);
                double gap = frame - t[LAST * cap + k];
                gap = gap > 1 ? gap : 1;
                double vx = t[4 * cap + k], vy = t[5 * cap + k], speed = hypot(vx, vy);
                double per = mind(maxd(3.0 * speed / h, 0.2), refind);
                double scale = h * (0.5 + per * gap), sp = maxd(speed, 1e-9);
                int own = argmax(votes + (size_t)k * nc, nc);
                int moving = 2 * speed * speed > t[VV * cap + k] + t[(VV + 1) * cap + k];
                for (int c = 0; c < nc_; c++) {
                    int j = dcols[c];
                    double cx = (double)((b[j] + b[2 * M + j]) / 2), cy = (double)((b[M + j] + b[3 * M + j]) / 2);
                    double dx = cx - t[k], dy = cy - t[cap + k];
                    double dist = hypot(dx, dy) / scale;
                    double along = (dx * vx + dy * vy) / sp;
                    along += speed * gap;
                    double ratio = (double)(b[3 * M + j] - b[M + j]) / h;
                    int same = own == cl[j] && ratio > 0.5 && ratio < 2 && (along >= -0.5 * h || !moving);
                    cost[a * nc_ + c] = same ? dist : INFINITY;
                }
            }
            int k4 = greedy(cost, trows, nr, dcols, nc_, 1.0, pairs, used_r, used_c, mr, mc);
            for (int i = 0; i < k4; i++) free_d[mc[i]] = 0, hit_t[nhit] = mr[i], hit_d[nhit++] = mc[i];
        }
    }
    /* 3: last frame's new tracks confirm with a high-score detection, or go */
    for (int k = 0; k < n; k++) remove[k] = !(t[CONFIRMED * cap + k] > 0);
    if (!every_conf) {
        nr = nc_ = 0;
        for (int k = 0; k < n; k++)
            if (remove[k]) trows[nr++] = k;
        for (int j = 0; j < m; j++)
            if (sc[j] > thr && free_d[j]) dcols[nc_++] = j;
        for (int a = 0; a < nr; a++)
            for (int c = 0; c < nc_; c++) cost[a * nc_ + c] = 1 - (double)iou[trows[a] * m + dcols[c]] * sc[dcols[c]];
        int k3 = nr && nc_ ? greedy(cost, trows, nr, dcols, nc_, 0.7, pairs, used_r, used_c, mr, mc) : 0;
        for (int i = 0; i < k3; i++) free_d[mc[i]] = 0, remove[mr[i]] = 0, hit_t[nhit] = mr[i], hit_d[nhit++] = mc[i];
    }
    /* _apply: correct the tracks that took a detection (_correct, with _xyah in float32) */
    for (int i = 0; i < nhit; i++) {
        int k = hit_t[i], j = hit_d[i];
        float w_ = b[2 * M + j] - b[j], h_ = b[3 * M + j] - b[M + j];
        float z[4] = {b[j] + w_ / 2, b[M + j] + h_ / 2, w_ / maxf(h_, 1e-6f), h_};
        double h = t[3 * cap + k];
        for (int d = 0; d < 4; d++) {
            double *pp = t + (PP + d) * cap + k, *pv = t + (PV + d) * cap + k;
            double s = h * h * R_H[d] + R_F[d];
            s += *pp;
            double gp = *pp / s, gv = *pv / s, innov = (double)z[d] - t[(POS + d) * cap + k];
            t[(POS + d) * cap + k] += gp * innov;
            t[(VEL + d) * cap + k] += gv * innov;
            t[(VV + d) * cap + k] -= gv * *pv;
            gp = 1 - gp;
            *pp *= gp, *pv *= gp;
        }
        t[STATE * cap + k] = TRACKED, t[CONFIRMED * cap + k] = 1.0, t[LAST * cap + k] = (double)frame;
        t[SCORE * cap + k] = sc[j];
        votes[(size_t)k * nc + cl[j]] += 1;
    }
    for (int k = 0; k < n; k++) {
        if (lostnow[k]) t[STATE * cap + k] = LOST;
        remove[k] |= t[LAST * cap + k] < frame - buffer;
    }
    /* new tracks from the high detections nobody took (_initiate) */
    int nn_ = n, nnew = 0;
    for (int j = 0; j < m; j++) {
        if (!free_d[j] || !(sc[j] >= thr + 0.1)) continue;
        int k = nn_++;
        float w_ = b[2 * M + j] - b[j], h_ = b[3 * M + j] - b[M + j];
        float z[4] = {b[j] + w_ / 2, b[M + j] + h_ / 2, w_ / maxf(h_, 1e-6f), h_};
        double hh = (double)(h_ * h_);
        for (int f = 0; f < nf; f++) t[f * cap + k] = 0;
        for (int d = 0; d < 4; d++) {
            t[(POS + d) * cap + k] = z[d];
            t[(PP + d) * cap + k] = hh * P0POS_H[d] + P0POS_F[d];
            t[(VV + d) * cap + k] = hh * P0VEL_H[d] + P0VEL_F[d];
        }
        t[ID * cap + k] = *next_id + nnew, t[STATE * cap + k] = TRACKED, t[CONFIRMED * cap + k] = first ? 1.0 : 0.0;
        t[LAST * cap + k] = t[START * cap + k] = (double)frame, t[SCORE * cap + k] = sc[j];
        memset(votes + (size_t)k * nc, 0, nc * sizeof(double));
        votes[(size_t)k * nc + cl[j]] = 1;
        remove[k] = 0;
        dcols[nnew++] = j;
    }
    *next_id += nnew;
    /* _drop_duplicates: a tracked and a lost track on the same object (IoU > 0.85), the younger goes */
    for (int q = 0; q < n; q++) {
        if (t[STATE * cap + q] != LOST || remove[q]) continue;
        for (int i = 0; i < nhit + nnew; i++) {
            int pk = i < nhit ? hit_t[i] : n + (i - nhit), dj = i < nhit ? hit_d[i] : dcols[i - nhit];
            if (!(iou[q * m + dj] > 0)) continue;
            double A[4], B[4];
            xyxy(t, cap, pk, A), xyxy(t, cap, q, B);
            double iw = maxd(mind(A[2], B[2]) - maxd(A[0], B[0]), 0), ih = maxd(mind(A[3], B[3]) - maxd(A[1], B[1]), 0);
            double uni = (A[2] - A[0]) * (A[3] - A[1]) + (B[2] - B[0]) * (B[3] - B[1]) - iw * ih;
            if (iw * ih / maxd(uni, 1e-9) > 0.85) {
                double age_p = t[LAST * cap + pk] - t[START * cap + pk], age_q = t[LAST * cap + q] - t[START * cap + q];
                remove[age_p > age_q ? q : pk] = 1;
            }
        }
    }
    /* the confirmed tracked tracks of this frame, then the state compacted */
    int out = 0, kept = 0;
    for (int k = 0; k < nn_; k++) {
        if (remove[k]) continue;
        if (t[STATE * cap + k] == TRACKED && t[CONFIRMED * cap + k] > 0) {
            double cx = t[k], cy = t[cap + k], hw = t[2 * cap + k] * 0.5 * t[3 * cap + k], hh = t[3 * cap + k] * 0.5;
            out_ids[out] = (int64_t)t[ID * cap + k];
            out_boxes[4 * out] = (float)(cx - hw), out_boxes[4 * out + 1] = (float)(cy - hh);
            out_boxes[4 * out + 2] = (float)(cx + hw), out_boxes[4 * out + 3] = (float)(cy + hh);
            out_scores[out] = t[SCORE * cap + k];
            out_classes[out] = argmax(votes + (size_t)k * nc, nc);
            out_centres[2 * out] = cx, out_centres[2 * out + 1] = cy;
            out_slots[out++] = kept;
        }
        if (kept != k) {
            for (int f = 0; f < nf; f++) t[f * cap + kept] = t[f * cap + k];
            memcpy(votes + (size_t)kept * nc, votes + (size_t)k * nc, nc * sizeof(double));
        }
        kept++;
    }
    *n_io = kept;
    free(mem);
    return out;
}
