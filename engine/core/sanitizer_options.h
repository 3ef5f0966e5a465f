// Sanitizer settings of the programs that include this header once (the ttq program, the tests).
//
// Leak checking in sanitizer builds (TTQ_SANITIZE=ON). Open MPI's plugins are unloaded at exit and leave allocations
// whose stacks LeakSanitizer cannot attribute (frames in "<unknown module>"), so no suppression
// can name them: processes started by Open MPI's mpirun (which sets OMPI_COMM_WORLD_SIZE) skip
// the leak check. Everything else, the multi-process TCP tests included, is leak-checked.
#pragma once

#if defined(__SANITIZE_ADDRESS__)
#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

// AddressSanitizer asks for its defaults while it starts, before its shadow memory and its
// interceptors (read, strncmp, ...) can be used: the function is not instrumented, and the
// environment is read from /proc with raw system calls and searched by hand.
extern "C" __attribute__((visibility("default"), used, no_sanitize("address", "undefined"))) const char*
__asan_default_options() {
  static char env[1 << 16];
  const long fd = syscall(SYS_openat, AT_FDCWD, "/proc/self/environ", O_RDONLY);
  if (fd < 0) return "";
  long n = 0, got = 0;
  while (n < static_cast<long>(sizeof(env)) - 1 &&
         (got = syscall(SYS_read, fd, env + n, sizeof(env) - 1 - static_cast<size_t>(n))) > 0)
    n += got;
  syscall(SYS_close, fd);
  static const char key[] = "OMPI_COMM_WORLD_SIZE=";
  for (long i = 0; i < n;) {  // entries are NUL-separated "NAME=value"
    long k = 0;
    while (key[k] != '\0' && i + k < n && env[i + k] == key[k]) ++k;
    if (key[k] == '\0') return "detect_leaks=0";
    while (i < n && env[i] != '\0') ++i;
    ++i;
  }
  return "";
}
#endif

#if defined(__SANITIZE_THREAD__)
// ThreadSanitizer builds (TTQ_SANITIZE_THREAD=ON) leave out two reports about code outside the
// engine:
// - Open MPI's TCP transport takes two of its own locks in both orders while MPI starts
//   (mca_btl_tcp_add_procs / mca_btl_tcp_proc_remove, inside MPI_Init on the communication thread);
// - an exception handed from one thread to another (std::exception_ptr, as the communication
//   thread hands a failed collective's error to the waiting thread) is freed by whichever thread
//   drops the last reference; libstdc++ counts the references with atomics it was not built to
//   show ThreadSanitizer, so the free looks unordered with the other thread's earlier reads.
extern "C" __attribute__((visibility("default"), used)) const char* __tsan_default_suppressions() {
  return "deadlock:mca_btl_tcp_add_procs\n"
         "deadlock:mca_btl_tcp_proc_remove\n"
         "race:std::__exception_ptr::exception_ptr::_M_release\n";
}
#endif
