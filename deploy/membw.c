/* Memory read bandwidth of this machine, for the "share of the bandwidth bound" figure of
 * deploy/bench-v4.sh: THREADS threads each sum their slice of a 1 GiB buffer (8 independent f64
 * accumulators, so loads, not adds, bound it); best of 5 passes, in GB/s (1e9 bytes/s).
 * Build: gcc -O3 -march=x86-64-v2 -pthread deploy/membw.c -o membw; run: ./membw [THREADS] */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BYTES (1UL << 30)

struct job { const double *p; size_t n; double sum; };

static void *run(void *a) {
    struct job *j = a;
    double s[8] = {0};
    for (size_t i = 0; i + 8 <= j->n; i += 8)
        for (int k = 0; k < 8; k++) s[k] += j->p[i + k];
    j->sum = s[0] + s[1] + s[2] + s[3] + s[4] + s[5] + s[6] + s[7];
    return NULL;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    int nt = argc > 1 ? atoi(argv[1]) : 2;
    if (nt < 1 || nt > 256) nt = 2;
    double *buf = malloc(BYTES);
    if (!buf) return 1;
    memset(buf, 1, BYTES);
    size_t n = BYTES / sizeof(double), per = n / nt;
    double best = 0, check = 0;
    for (int rep = 0; rep < 5; rep++) {
        pthread_t th[256];
        struct job jobs[256];
        double t0 = now();
        for (int i = 0; i < nt; i++) {
            jobs[i] = (struct job){buf + i * per, per, 0};
            pthread_create(&th[i], NULL, run, &jobs[i]);
        }
        for (int i = 0; i < nt; i++) {
            pthread_join(th[i], NULL);
            check += jobs[i].sum;
        }
        double gbs = (double)per * nt * sizeof(double) / (now() - t0) / 1e9;
        if (gbs > best) best = gbs;
    }
    printf("%.2f\n", best);
    fprintf(stderr, "(checksum %g)\n", check);
    return 0;
}
