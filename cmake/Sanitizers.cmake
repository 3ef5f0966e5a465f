# TTQ_SANITIZE=ON builds everything with AddressSanitizer + UndefinedBehaviorSanitizer.
if(TTQ_SANITIZE)
  add_compile_options(
    "$<$<COMPILE_LANGUAGE:CXX>:-fsanitize=address,undefined>"
    "$<$<COMPILE_LANGUAGE:CXX>:-fno-omit-frame-pointer>"
    "$<$<COMPILE_LANGUAGE:CXX>:-fno-sanitize-recover=undefined>")
  add_link_options(-fsanitize=address,undefined)
  message(STATUS "Sanitizers: AddressSanitizer + UndefinedBehaviorSanitizer")
endif()
