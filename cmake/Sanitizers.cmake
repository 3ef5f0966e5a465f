# TTQ_SANITIZE=ON builds everything with AddressSanitizer + UndefinedBehaviorSanitizer.
if(TTQ_SANITIZE)
  add_compile_options(
    "$<$<COMPILE_LANGUAGE:CXX>:-fsanitize=address,undefined>"
    "$<$<COMPILE_LANGUAGE:CXX>:-fno-omit-frame-pointer>"
    "$<$<COMPILE_LANGUAGE:CXX>:-fno-sanitize-recover=undefined>")
  add_link_options(-fsanitize=address,undefined)
  message(STATUS "Sanitizers: AddressSanitizer + UndefinedBehaviorSanitizer")
endif()

# TTQ_SANITIZE_THREAD=ON builds with ThreadSanitizer, for the engine's own threads (the data
# loader's workers, the communication thread of the mpi/tcp backends, the in-process ranks of the
# tests). OpenMP is left out of this build (its runtime is not instrumented, so ThreadSanitizer
# would report its barriers as races): the engine's CPU loops run on one thread. The CUDA backend is left out too.
if(TTQ_SANITIZE_THREAD)
  if(TTQ_SANITIZE)
    message(FATAL_ERROR "TTQ_SANITIZE and TTQ_SANITIZE_THREAD cannot be combined")
  endif()
  add_compile_options(
    "$<$<COMPILE_LANGUAGE:CXX>:-fsanitize=thread>"
    "$<$<COMPILE_LANGUAGE:CXX>:-fno-omit-frame-pointer>")
  add_link_options(-fsanitize=thread)
  set(TTQ_WITH_CUDA OFF)
  message(STATUS "Sanitizers: ThreadSanitizer (the engine's own CPU loops single-threaded; oneDNN keeps its threads, unchecked)")
endif()
