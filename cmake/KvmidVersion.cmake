# One version string for every binary: the project's VERSION, refined by
# `git describe` when the sources are a git checkout and git is installed
# (a release tarball has neither and builds as plain PROJECT_VERSION).
# Read at configure time; a change of branch or a new commit re-runs the
# configure step through CMAKE_CONFIGURE_DEPENDS on HEAD and its ref.
#
# Defines KVMID_VERSION and the INTERFACE target kvmid_version, whose
# include directory holds kvmid_version.hpp (cmake/kvmid_version.hpp.in).

set(KVMID_VERSION ${PROJECT_VERSION})
find_package(Git QUIET)
if(GIT_FOUND)
  execute_process(
    COMMAND ${GIT_EXECUTABLE} describe --tags --always --dirty --match "v[0-9]*"
    WORKING_DIRECTORY ${PROJECT_SOURCE_DIR}
    OUTPUT_VARIABLE _kvmid_describe OUTPUT_STRIP_TRAILING_WHITESPACE
    RESULT_VARIABLE _kvmid_describe_rc ERROR_QUIET)
  if(_kvmid_describe_rc EQUAL 0 AND NOT _kvmid_describe STREQUAL "")
    if(_kvmid_describe MATCHES "^v([0-9].*)$")
      # A release tag (v0.2, or v0.2-3-gabc1234 past it) names the version.
      set(KVMID_VERSION ${CMAKE_MATCH_1})
    else()
      # No tag yet: the project version plus the commit.
      set(KVMID_VERSION "${PROJECT_VERSION}-g${_kvmid_describe}")
    endif()
    execute_process(
      COMMAND ${GIT_EXECUTABLE} rev-parse --path-format=absolute --git-path HEAD
      WORKING_DIRECTORY ${PROJECT_SOURCE_DIR}
      OUTPUT_VARIABLE _kvmid_head OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    execute_process(
      COMMAND ${GIT_EXECUTABLE} symbolic-ref -q HEAD
      WORKING_DIRECTORY ${PROJECT_SOURCE_DIR}
      OUTPUT_VARIABLE _kvmid_branch OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    set(_kvmid_watch ${_kvmid_head})
    if(NOT _kvmid_branch STREQUAL "")
      execute_process(
        COMMAND ${GIT_EXECUTABLE} rev-parse --path-format=absolute --git-path ${_kvmid_branch}
        WORKING_DIRECTORY ${PROJECT_SOURCE_DIR}
        OUTPUT_VARIABLE _kvmid_ref OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
      list(APPEND _kvmid_watch ${_kvmid_ref})
    endif()
    foreach(_f ${_kvmid_watch})
      if(EXISTS ${_f})
        set_property(DIRECTORY ${PROJECT_SOURCE_DIR} APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${_f})
      endif()
    endforeach()
  endif()
endif()
message(STATUS "kvmid version ${KVMID_VERSION}")

configure_file(${CMAKE_CURRENT_LIST_DIR}/kvmid_version.hpp.in
               ${PROJECT_BINARY_DIR}/generated/kvmid_version.hpp @ONLY)
add_library(kvmid_version INTERFACE)
target_include_directories(kvmid_version INTERFACE ${PROJECT_BINARY_DIR}/generated)
