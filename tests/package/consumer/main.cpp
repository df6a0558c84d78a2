// Uses the installed headers: builds a tiny model piece and checks one number.
#include <cstdio>
#include <xlstm/xlstm.hpp>

int main() {
  Eigen::ArrayXf x(1);
  x << 0.0f;
  const float s = xlstm::sigmoid(x)(0);
  std::printf("xlstm %s, sigmoid(0) = %g\n", xlstm::version_string, static_cast<double>(s));
  return s == 0.5f ? 0 : 1;
}
