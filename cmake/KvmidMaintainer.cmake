# The Debian package's Maintainer field, "Full Name <user@host>" (Debian
# policy 5.6.2). A packager sets it when configuring:
#   cmake -DKVMID_PACKAGE_MAINTAINER="Jane Doe <jane@example.net>" ...
# Without it the first configure takes Debian's packaging environment, as
# dch and dh_make do: DEBFULLNAME and DEBEMAIL (or DEBEMAIL alone in the
# "Full Name <user@host>" form). Else a build is marked as a local one,
# with an address under example.org (RFC 2606: it reaches no one), which
# lintian accepts; a package given to others should name its maintainer.
set(KVMID_DEFAULT_PACKAGE_MAINTAINER "kvmid local build <kvmid-build@example.org>")

# The maintainer the environment names, or the default.
function(kvmid_maintainer_from_env out)
  set(value "${KVMID_DEFAULT_PACKAGE_MAINTAINER}")
  if(DEFINED ENV{DEBEMAIL} AND "$ENV{DEBEMAIL}" MATCHES "<")
    set(value "$ENV{DEBEMAIL}")
  elseif(DEFINED ENV{DEBEMAIL} AND DEFINED ENV{DEBFULLNAME})
    set(value "$ENV{DEBFULLNAME} <$ENV{DEBEMAIL}>")
  endif()
  set(${out} "${value}" PARENT_SCOPE)
endfunction()

# Why `value` is not a Maintainer field lintian takes without an error
# (malformed-contact, bogus-mail-host, root-in-contact), or "" when it is.
function(kvmid_check_maintainer value out)
  set(why "")
  if(NOT value MATCHES "^([^<>@,]*[^<>@, ]) <([^<>@ ,]+)@([^<>@ ,]+)>$")
    set(why "is not \"Full Name <user@host>\"")
  else()
    set(phrase "${CMAKE_MATCH_1}")
    set(user "${CMAKE_MATCH_2}")
    set(host "${CMAKE_MATCH_3}")
    string(TOLOWER "${host}" host)
    if(NOT host MATCHES "^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$")
      set(why "has a mail host '${host}' that is not a domain name")
    elseif(host MATCHES "(^|\\.)(localhost|localdomain)$")
      set(why "has a mail host '${host}' that no one else reaches")
    elseif(user STREQUAL "root" OR phrase STREQUAL "root")
      set(why "names root, not a person or a team")
    endif()
  endif()
  set(${out} "${why}" PARENT_SCOPE)
endfunction()

# Sets the cache variable KVMID_PACKAGE_MAINTAINER (from the environment on
# the first configure) and stops the configure if lintian would refuse it.
# Called before add_subdirectory(tests): package_deb checks the value.
macro(kvmid_package_maintainer)
  kvmid_maintainer_from_env(_maintainer)
  set(KVMID_PACKAGE_MAINTAINER "${_maintainer}" CACHE STRING
      "Maintainer field of the Debian package: \"Full Name <user@host>\" (default: DEBFULLNAME/DEBEMAIL, else a local build's)")
  kvmid_check_maintainer("${KVMID_PACKAGE_MAINTAINER}" _why)
  if(_why)
    message(FATAL_ERROR "KVMID_PACKAGE_MAINTAINER '${KVMID_PACKAGE_MAINTAINER}' ${_why}: "
      "set it with -DKVMID_PACKAGE_MAINTAINER=\"Full Name <user@example.net>\"")
  endif()
endmacro()
