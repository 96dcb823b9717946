# ctest driver: install BUILD_DIR into a scratch prefix, build the consumer project SOURCE_DIR against it
# with find_package(flexavatar), run its EXECUTABLE (default: consumer) and expect EXPECT_EXIT_CODE (default 0;
# the example application without arguments prints its usage and exits with 2). TOOLCHAIN_FILE / EMULATOR
# (|-separated) / EXE_SUFFIX: a cross build's toolchain file, the program that runs its binaries, and their suffix.
file(REMOVE_RECURSE "${WORK_DIR}")
if(NOT DEFINED EXECUTABLE)
  set(EXECUTABLE consumer)
endif()
if(NOT DEFINED EXPECT_EXIT_CODE)
  set(EXPECT_EXIT_CODE 0)
endif()
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGN}")
  endif()
endfunction()
run(${CMAKE_COMMAND} --install "${BUILD_DIR}" --prefix "${WORK_DIR}/prefix")
set(toolchain)
if(TOOLCHAIN_FILE)   # a cross build: the consumer with the same toolchain, run under its emulator
  set(toolchain -DCMAKE_TOOLCHAIN_FILE=${TOOLCHAIN_FILE})
endif()
string(REPLACE "|" ";" emulator "${EMULATOR}")
run(${CMAKE_COMMAND} -S "${SOURCE_DIR}" -B "${WORK_DIR}/build" -G "${GENERATOR}" ${toolchain}
    -DCMAKE_CXX_COMPILER=${CXX_COMPILER} "-DCMAKE_CXX_FLAGS=${CXX_FLAGS}" -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix -DCMAKE_BUILD_TYPE=Release)
run(${CMAKE_COMMAND} --build "${WORK_DIR}/build")
execute_process(COMMAND ${emulator} "${WORK_DIR}/build/${EXECUTABLE}${EXE_SUFFIX}" RESULT_VARIABLE rc)
if(NOT rc EQUAL EXPECT_EXIT_CODE)
  message(FATAL_ERROR "${WORK_DIR}/build/${EXECUTABLE}${EXE_SUFFIX} exited with ${rc}, expected ${EXPECT_EXIT_CODE}")
endif()
