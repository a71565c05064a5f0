// Child processes under their earlier include path; new tests include
// tests/support/child_process.hpp directly.
#pragma once

#include "tests/support/child_process.hpp"
