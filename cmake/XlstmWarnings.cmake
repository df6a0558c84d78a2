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

# Builds one of our own targets for the build machine (-march=native: the
# benchmarks and test_matmul_native). On AVX-512 machines GCC 12 reports the
# false positive above thousands of times per file (every inlined Eigen
# AVX-512 kernel), burying real messages in the build log; those two warnings
# are therefore off for these targets only. The same code is compiled with
# them on in every other target, where the AVX-512 intrinsics are absent.
function(xlstm_build_native target)
  if(NOT CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    return()
  endif()
  target_compile_options(${target} PRIVATE -march=native)
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13)
    target_compile_options(${target} PRIVATE -Wno-maybe-uninitialized -Wno-uninitialized)
  endif()
endfunction()
