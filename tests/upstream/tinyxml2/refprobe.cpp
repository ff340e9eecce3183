// refprobe: a long-running TinyXML-2 user for tests/upstream. It prints the library's
// version, then parses each line read from stdin as an XML document and prints its root
// element's text (or the parse error's name); a line "print DOC" prints DOC back through
// XMLPrinter instead, newlines shown as '|'.
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
        const bool print = line.compare(0, 6, "print ") == 0;
        if (print) {
            line.erase(0, 6);
        }
        XMLDocument doc;
        if (doc.Parse(line.c_str()) != XML_SUCCESS) {
            std::printf("error %s\n", doc.ErrorName());
        } else if (print) {
            XMLPrinter printer;
            doc.Print(&printer);
            std::string out = printer.CStr();
            for (char& c : out) {
                if (c == '\n') {
                    c = '|';
                }
            }
            std::printf("xml %s\n", out.c_str());
        } else {
            const char* text = doc.RootElement()->GetText();
            std::printf("text %s\n", text ? text : "(none)");
        }
        std::fflush(stdout);
    }
    return 0;
}
