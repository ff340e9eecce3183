// fmtprobe: a long-running {fmt} user for tests/upstream. It prints the library's version,
// then formats the integer 42 with each line read from stdin as the format string, through
// fmt::vformat, which libfmt.so implements (format string parsing included), and prints
// "ok RESULT" or "error MESSAGE" for a format_error.
#include <cstdio>
#include <iostream>
#include <string>
#include <fmt/format.h>

int main()
{
    std::printf("fmt %d\n", FMT_VERSION);
    std::fflush(stdout);
    std::string line;
    while (std::getline(std::cin, line)) {
        try {
            const std::string out = fmt::vformat(fmt::string_view(line), fmt::make_format_args(42));
            std::printf("ok %s\n", out.c_str());
        } catch (const fmt::format_error& e) {
            std::printf("error %s\n", e.what());
        }
        std::fflush(stdout);
    }
    return 0;
}
