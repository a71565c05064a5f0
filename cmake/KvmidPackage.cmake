# The Debian package (CPack DEB): `cmake --build build --target package`, or
# `cpack -G DEB` in the build dir to pack binaries already built. It holds
# kvmid, kvmictl, kvmi-sim, the systemd unit and its user, the config, the
# schema, the man pages and the copyright file, laid out as Debian wants.
# Nothing of the tests is installed.

set(_pkg ${PROJECT_SOURCE_DIR}/packaging/debian)
set(_gen ${PROJECT_BINARY_DIR}/package-files)
find_program(GZIP_EXECUTABLE gzip REQUIRED)

# Debian's upstream version may hold a '-' only before a revision: the git
# suffix (0.1-g1d0def5-dirty) becomes 0.1+g1d0def5+dirty, a native version.
string(REPLACE "-" "+" KVMID_DEB_VERSION "${KVMID_VERSION}")
# KVMID_PACKAGE_MAINTAINER: set by kvmid_package_maintainer() in the
# top-level CMakeLists.txt, before the tests that check the package.

# Compressed as Debian wants (gzip -9n: no name or time in the header, so
# the same page gives the same bytes), at build time.
set(_gz_files)
function(kvmid_gzip src dst)
  add_custom_command(OUTPUT ${dst}
    COMMAND ${GZIP_EXECUTABLE} -9n -c ${src} > ${dst}
    DEPENDS ${src} VERBATIM)
  set(_gz_files ${_gz_files} ${dst} PARENT_SCOPE)
endfunction()
kvmid_gzip(${PROJECT_SOURCE_DIR}/docs/man/kvmid.8 ${_gen}/kvmid.8.gz)
kvmid_gzip(${PROJECT_SOURCE_DIR}/docs/man/kvmictl.1 ${_gen}/kvmictl.1.gz)
kvmid_gzip(${PROJECT_SOURCE_DIR}/docs/man/kvmi-sim.1 ${_gen}/kvmi-sim.1.gz)
kvmid_gzip(${PROJECT_SOURCE_DIR}/docs/service.md ${_gen}/service.md.gz)

# A native package's changelog: one entry naming the version built.
execute_process(COMMAND date -R OUTPUT_VARIABLE _date OUTPUT_STRIP_TRAILING_WHITESPACE)
if(GIT_FOUND)
  execute_process(COMMAND ${GIT_EXECUTABLE} log -1 --format=%aD
    WORKING_DIRECTORY ${PROJECT_SOURCE_DIR}
    OUTPUT_VARIABLE _commit_date OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  if(NOT _commit_date STREQUAL "")
    set(_date ${_commit_date}) # the same sources give the same changelog
  endif()
endif()
file(WRITE ${_gen}/changelog
  "kvmid (${KVMID_DEB_VERSION}) unstable; urgency=medium\n\n"
  "  * Built from the kvmid sources at ${KVMID_VERSION}.\n\n"
  " -- ${KVMID_PACKAGE_MAINTAINER}  ${_date}\n")
kvmid_gzip(${_gen}/changelog ${_gen}/changelog.gz)
add_custom_target(kvmid_package_files ALL DEPENDS ${_gz_files})

install(TARGETS kvmid RUNTIME DESTINATION sbin)
install(TARGETS kvmictl kvmi-sim RUNTIME DESTINATION bin)
# Absolute paths: /lib and /etc are outside the /usr prefix.
install(FILES ${PROJECT_SOURCE_DIR}/config/kvmid.service DESTINATION /lib/systemd/system)
install(FILES ${PROJECT_SOURCE_DIR}/config/kvmid.sysusers DESTINATION lib/sysusers.d
        RENAME kvmid.conf)
install(FILES ${PROJECT_SOURCE_DIR}/config/kvmid-service.json DESTINATION /etc/kvmid
        RENAME kvmid.json)
install(FILES ${PROJECT_SOURCE_DIR}/config/kvmid.schema.json DESTINATION share/kvmid)
install(FILES ${_gen}/kvmid.8.gz DESTINATION share/man/man8)
install(FILES ${_gen}/kvmictl.1.gz ${_gen}/kvmi-sim.1.gz DESTINATION share/man/man1)
install(FILES ${_pkg}/copyright ${_gen}/changelog.gz ${_gen}/service.md.gz
        DESTINATION share/doc/kvmid)
# Every field the example config knows, beside the one the service starts with.
install(FILES ${PROJECT_SOURCE_DIR}/config/kvmid.json ${PROJECT_SOURCE_DIR}/config/README.md
        DESTINATION share/doc/kvmid/examples)

# CPack's own install step first builds the preinstall target, that is all
# of the build, tests included; this script installs what the build already
# has, so packing stays cheap (the test packs each run). `--target package`
# still builds everything first: its preinstall comes before cpack.
file(WRITE ${_gen}/install.cmake
  "set(CMAKE_INSTALL_DO_STRIP 1)\n"
  "include(${PROJECT_BINARY_DIR}/cmake_install.cmake)\n")
set(CPACK_INSTALL_CMAKE_PROJECTS "")
set(CPACK_INSTALL_SCRIPTS ${_gen}/install.cmake)

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME kvmid)
set(CPACK_PACKAGE_VENDOR "kvmid")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_INSTALL_PREFIX /usr)
set(CPACK_SET_DESTDIR ON) # the absolute destinations above go into the package too
set(CPACK_DEBIAN_PACKAGE_VERSION ${KVMID_DEB_VERSION})
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_MAINTAINER ${KVMID_PACKAGE_MAINTAINER})
set(CPACK_DEBIAN_PACKAGE_SECTION admin)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
# The postinst creates the kvmid user with systemd-sysusers.
set(CPACK_DEBIAN_PACKAGE_DEPENDS "systemd | systemd-standalone-sysusers | systemd-sysusers")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "KVM introspection (KVMI) server")
# The long description; CPack indents it and writes its empty line as " .".
set(CPACK_DEBIAN_PACKAGE_DESCRIPTION
  "kvmid holds the introspection end of KVMI, one socket per virtual machine,
and answers every event a guest vCPU raises while that vCPU waits: it
protects guest kernel pages, pins control registers and MSRs, plants
breakpoints, pauses and inspects guests, and gives a monitoring service a
JSON control API, a live event stream and Prometheus metrics.

This package holds the daemon with its systemd unit, kvmictl (the
command-line client of its API) and kvmi-sim (a simulated KVMI host for
trying kvmid without a patched kernel).")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA ${_pkg}/postinst ${_pkg}/prerm ${_pkg}/postrm
    ${_pkg}/conffiles)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
include(CPack)
