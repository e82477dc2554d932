/* Linked into chainrule._core by tools/build_wheel.sh only (never by the normal build), so a
 * wheel built on a machine with a newer glibc (2.34+) loads on glibc 2.28, the manylinux_2_28
 * floor. Each definition below is hidden: it binds every reference inside _core -- our
 * objects and the objects taken from libstdc++.a (-static-libstdc++) -- at link time, so the
 * module never imports the new symbol version. Nothing here changes a computed value:
 *
 *  exp, log, pow (GLIBC_2.29) -> the GLIBC_2.2.5 versions. Since glibc 2.28 both versions
 *    run the same implementation; the old one is a wrapper that also sets errno on overflow,
 *    underflow and domain errors (the core never reads errno). For a domain error (log(-1))
 *    it makes its own NaN, whose sign bit may differ: still a NaN. check_libm_versions.py
 *    compares the two versions bit for bit on ~10^5 inputs before tools/build_wheel.sh links.
 *  pthread_once/create/join/detach (GLIBC_2.34, when libpthread moved into libc) -> the
 *    GLIBC_2.2.5 versions, the same functions kept under their old names.
 *  __libc_single_threaded (GLIBC_2.32): libstdc++'s headers read it to skip atomic reference
 *    counting in a process without threads. Here it is a constant 0 ("may have threads"):
 *    always the atomic path, which is correct in every process (the core runs OpenMP threads
 *    anyway).
 *  arc4random (GLIBC_2.36): referenced only by std::random_device in libstdc++.a (pulled in
 *    with the COW-string instantiations; the core never constructs one). Same contract via
 *    getentropy (GLIBC_2.25): 32 bits from the kernel's random source.
 *
 * x86_64 only: the version names below are x86_64's base version (aarch64's is GLIBC_2.17).
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#if !defined(__x86_64__) || !defined(__GLIBC__)
#error "glibc_2_28_shims.c is for x86_64 glibc (tools/build_wheel.sh)"
#endif

#define HIDDEN __attribute__((visibility("hidden")))

/* ---- libm: the pre-2.29 symbol versions of the same functions ---- */
double cr_old_exp(double);
double cr_old_log(double);
double cr_old_pow(double, double);
__asm__(".symver cr_old_exp, exp@GLIBC_2.2.5");
__asm__(".symver cr_old_log, log@GLIBC_2.2.5");
__asm__(".symver cr_old_pow, pow@GLIBC_2.2.5");

HIDDEN double exp(double x) { return cr_old_exp(x); }
HIDDEN double log(double x) { return cr_old_log(x); }
HIDDEN double pow(double x, double y) { return cr_old_pow(x, y); }

/* ---- libpthread, merged into libc in 2.34: the same functions under their old versions ---- */
int cr_old_pthread_once(pthread_once_t*, void (*)(void));
int cr_old_pthread_create(pthread_t*, const pthread_attr_t*, void* (*)(void*), void*);
int cr_old_pthread_join(pthread_t, void**);
int cr_old_pthread_detach(pthread_t);
__asm__(".symver cr_old_pthread_once, pthread_once@GLIBC_2.2.5");
__asm__(".symver cr_old_pthread_create, pthread_create@GLIBC_2.2.5");
__asm__(".symver cr_old_pthread_join, pthread_join@GLIBC_2.2.5");
__asm__(".symver cr_old_pthread_detach, pthread_detach@GLIBC_2.2.5");

HIDDEN int pthread_once(pthread_once_t* once, void (*init)(void)) {
  return cr_old_pthread_once(once, init);
}
HIDDEN int pthread_create(pthread_t* t, const pthread_attr_t* attr, void* (*fn)(void*), void* arg) {
  return cr_old_pthread_create(t, attr, fn, arg);
}
HIDDEN int pthread_join(pthread_t t, void** ret) { return cr_old_pthread_join(t, ret); }
HIDDEN int pthread_detach(pthread_t t) { return cr_old_pthread_detach(t); }

/* ---- libstdc++'s single-thread shortcut: always take the atomic path ---- */
HIDDEN char __libc_single_threaded = 0;

/* ---- std::random_device's source ---- */
HIDDEN uint32_t arc4random(void) {
  uint32_t v;
  if (getentropy(&v, sizeof v) != 0) abort(); /* as arc4random: it cannot fail */
  return v;
}
