# cmake -DPROGRAM=<train_parity> -DDIR=<scratch dir> -P check_train_determinism.cmake:
# the same options, seed and thread count give the same checkpoint byte for
# byte (parameters and AdamW moments after N steps): two runs of a mixed
# [mLSTM, sLSTM] model on two threads, so the parallel paths of both blocks'
# forward and backward are covered. -DEMULATOR=<runner>: run the program
# through it (a cross build, e.g. wine).
set(args --slstm-at 1 --steps 30 --batch-size 64 --train-min-length 3 --train-max-length 12
         --embedding-dim 32 --lr 1e-2 --warmup-steps 5 --eval-every 0 --eval-samples 0
         --in-dist-samples 0 --threads 2 --print-every 30)
file(MAKE_DIRECTORY "${DIR}")
foreach(run first second)
  execute_process(COMMAND ${EMULATOR} "${PROGRAM}" ${args} --save "${DIR}/${run}.safetensors"
                  RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${PROGRAM} (${run} run) failed (${rc})")
  endif()
endforeach()
execute_process(COMMAND "${CMAKE_COMMAND}" -E compare_files "${DIR}/first.safetensors"
                        "${DIR}/second.safetensors" RESULT_VARIABLE differ)
if(differ)
  message(FATAL_ERROR "two runs with the same seed and thread count gave different checkpoints")
endif()
message(STATUS "two runs of 30 steps on 2 threads: identical checkpoints, byte for byte")
