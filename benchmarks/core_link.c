/* The round trip of a cache line between two cores: one thread on each, taking turns to
   bump a shared counter. Built and loaded by core_link.py. */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <time.h>

static _Atomic long counter __attribute__((aligned(64)));
static atomic_int stop;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

static void *answer(void *cpu) {   /* turns each odd count into the next even one */
    pin(*(int *)cpu);   /* a core the caller may use (checked) */
    for (long seen = 1; !atomic_load(&stop); seen += 2) {
        while (atomic_load_explicit(&counter, memory_order_acquire) != seen)
            if (atomic_load(&stop)) return NULL;
        atomic_store_explicit(&counter, seen + 1, memory_order_release);
    }
    return NULL;
}

/* Mean nanoseconds of a round trip between cores a and b over `seconds`; -1 if the calling
   thread may not use both. Its affinity is restored. */
double round_trip_ns(int a, int b, double seconds) {
    cpu_set_t before;
    pthread_getaffinity_np(pthread_self(), sizeof before, &before);
    if (a < 0 || b < 0 || a >= CPU_SETSIZE || b >= CPU_SETSIZE || !CPU_ISSET(a, &before)
            || !CPU_ISSET(b, &before) || pin(a) != 0)
        return -1;
    atomic_store(&counter, 0);
    atomic_store(&stop, 0);
    pthread_t other;
    pthread_create(&other, NULL, answer, &b);
    long trips = 0;
    double start = now(), end = start;
    while (end - start < seconds) {
        for (int i = 0; i < 16; ++i, ++trips) {   /* the clock read every 16 trips */
            long sent = 2 * trips + 1;
            atomic_store_explicit(&counter, sent, memory_order_release);
            while (atomic_load_explicit(&counter, memory_order_acquire) != sent + 1) {}
        }
        end = now();
    }
    atomic_store(&stop, 1);
    pthread_join(other, NULL);
    pthread_setaffinity_np(pthread_self(), sizeof before, &before);
    return (end - start) / trips * 1e9;
}
