/* bcryptprimitives.dll's ProcessPrng, for Wine 8.0, which lacks it: Rust's
 * standard library (1.78 on) imports it for its random numbers, and a Rust
 * program built for Windows does not start without it. It asks advapi32's
 * RtlGenRandom (SystemFunction036), which Wine has, for the same bytes.
 * Built by .ci/platforms with mingw-w64 and placed beside each program
 * run under Wine; nothing that ships is built with it. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length) {
    while (length > 0) {
        ULONG chunk = length > 0x40000000 ? 0x40000000 : (ULONG)length;
        if (!SystemFunction036(data, chunk)) {
            return FALSE;
        }
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
