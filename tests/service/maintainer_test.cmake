# The package's Maintainer field as a packager sets it: the fields lintian
# takes pass, the ones it would report as errors stop the configure, and
# Debian's packaging environment gives the default.
# usage: cmake -DSOURCE_DIR=<kvmid sources> -P maintainer_test.cmake
include(${SOURCE_DIR}/cmake/KvmidMaintainer.cmake)

set(failures 0)
function(expect value ok)
  kvmid_check_maintainer("${value}" why)
  if((ok AND why) OR (NOT ok AND NOT why))
    message(SEND_ERROR "'${value}': expected ${ok}, got '${why}'")
  endif()
endfunction()

expect("${KVMID_DEFAULT_PACKAGE_MAINTAINER}" TRUE)
expect("Jane Doe <jane@example.net>" TRUE)
expect("kvmid team <packaging@lists.example.net>" TRUE)
expect("jane@example.net" FALSE)              # no name
expect("Jane Doe" FALSE)                      # no address
expect("Jane Doe <jane@localhost>" FALSE)     # bogus-mail-host
expect("Jane Doe <jane@build.localdomain>" FALSE)
expect("Jane Doe <jane@buildhost>" FALSE)     # not a domain
expect("root <root@example.net>" FALSE)       # root-in-contact
expect("Doe, Jane <jane@example.net>" FALSE)  # a comma splits the field in two

unset(ENV{DEBEMAIL})
unset(ENV{DEBFULLNAME})
kvmid_maintainer_from_env(m)
if(NOT m STREQUAL KVMID_DEFAULT_PACKAGE_MAINTAINER)
  message(SEND_ERROR "without DEBEMAIL: '${m}'")
endif()
set(ENV{DEBEMAIL} "jane@example.net")
set(ENV{DEBFULLNAME} "Jane Doe")
kvmid_maintainer_from_env(m)
if(NOT m STREQUAL "Jane Doe <jane@example.net>")
  message(SEND_ERROR "DEBFULLNAME and DEBEMAIL: '${m}'")
endif()
set(ENV{DEBEMAIL} "John Roe <john@example.net>")
kvmid_maintainer_from_env(m)
if(NOT m STREQUAL "John Roe <john@example.net>")
  message(SEND_ERROR "DEBEMAIL with a name: '${m}'")
endif()
