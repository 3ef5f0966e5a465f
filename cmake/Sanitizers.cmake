# TTQ_SANITIZE=ON builds everything with AddressSanitizer + UndefinedBehaviorSanitizer.
if(TTQ_SANITIZE)
  set(_ttq_san_flags -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  add_compile_options($<$<COMPILE_LANGUAGE:CXX>:${_ttq_san_flags}>)
  add_link_options(-fsanitize=address,undefined)
  message(STATUS "Sanitizers: AddressSanitizer + UndefinedBehaviorSanitizer")
endif()
