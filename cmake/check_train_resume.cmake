# cmake -DPROGRAM=<train_parity> -DDIR=<scratch dir> -P check_train_resume.cmake:
# a run of 40 steps saved at the end must equal, byte for byte, a run stopped
# at step 20 (--stop-at-step, --save) and continued with --resume.
# -DEMULATOR=<runner>: run the program through it (a cross build, e.g. wine).
set(args --steps 40 --batch-size 16 --train-min-length 3 --train-max-length 6
         --embedding-dim 8 --num-heads 1 --lr 1e-2 --warmup-steps 5 --eval-every 0
         --eval-samples 0 --threads 1 --print-every 40)
file(MAKE_DIRECTORY "${DIR}")
set(straight "${DIR}/straight.safetensors")
set(half "${DIR}/half.safetensors")
set(resumed "${DIR}/resumed.safetensors")
foreach(run "--save;${straight}" "--stop-at-step;20;--save;${half}"
            "--resume;${half};--save;${resumed}")
  execute_process(COMMAND ${EMULATOR} "${PROGRAM}" ${args} ${run} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${PROGRAM} ${run} failed (${rc})")
  endif()
endforeach()
execute_process(COMMAND "${CMAKE_COMMAND}" -E compare_files "${straight}" "${resumed}"
                RESULT_VARIABLE differ)
if(differ)
  message(FATAL_ERROR "the resumed run's checkpoint differs from the uninterrupted run's")
endif()
message(STATUS "20 steps + save + resume + 20 steps = 40 steps, byte for byte")
