// refprobe: a long-running TinyXML-2 user for tests/upstream. It prints the library's
// version, then parses each line read from stdin as an XML document and prints its root
// element's text (or the parse error's name).
#include <cstdio>
#include <cstring>
#include <string>
#include <iostream>
#include <tinyxml2.h>

using namespace tinyxml2;

int main()
{
    std::printf("tinyxml2 %d.%d.%d\n", TIXML2_MAJOR_VERSION, TIXML2_MINOR_VERSION, TIXML2_PATCH_VERSION);
    std::fflush(stdout);
    std::string line;
    while (std::getline(std::cin, line)) {
        XMLDocument doc;
        if (doc.Parse(line.c_str()) != XML_SUCCESS) {
            std::printf("error %s\n", doc.ErrorName());
        } else {
            const char* text = doc.RootElement()->GetText();
            std::printf("text %s\n", text ? text : "(none)");
        }
        std::fflush(stdout);
    }
    return 0;
}
