// Test entry point: quiet logging, then GoogleTest.
#include <gtest/gtest.h>

#include "painvrl/data/error.h"

int main(int argc, char** argv) {
  painvrl::set_quiet(true);
  testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
