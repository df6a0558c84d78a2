# Warnings as errors for this project's own targets only; never for consumers.
function(xlstm_set_warnings target)
  if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic -Werror)
  elseif(MSVC)
    target_compile_options(${target} PRIVATE /W4 /WX)
  endif()
  # GCC 12 with -march=native on AVX-512 machines warns inside its own
  # avx512fintrin.h (`__m512 __Y = __Y;` of _mm512_undefined_ps, GCC bug
  # 105593, fixed in GCC 13) wherever Eigen's AVX-512 kernels are inlined, as
  # -Wmaybe-uninitialized or -Wuninitialized; with -Werror that false positive
  # would stop the release build. Kept as warnings there, not errors.
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13)
    target_compile_options(${target} PRIVATE -Wno-error=maybe-uninitialized
                                             -Wno-error=uninitialized)
  endif()
endfunction()
