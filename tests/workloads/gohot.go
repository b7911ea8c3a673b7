// gohot — burns argv[1] seconds (default 3) in main.outer → main.middle → main.inner, for the
// Go part of the DWARF tests (tests/e2e/test_unwind_go.sh builds it when go is installed).
// main.inner is a leaf without a frame (no locals): a frame-pointer-only walk loses main.middle
// there; its row from .debug_frame keeps it.
package main

import (
	"fmt"
	"os"
	"strconv"
	"time"
)

//go:noinline
func inner(x uint64) uint64 {
	for i := 0; i < 100000; i++ {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
	}
	return x
}

//go:noinline
func middle(x uint64) uint64 { return inner(x) + 1 }

//go:noinline
func outer(d time.Duration) uint64 {
	end := time.Now().Add(d)
	x := uint64(42)
	for time.Now().Before(end) {
		x = middle(x)
	}
	return x
}

func main() {
	s := 3.0
	if len(os.Args) > 1 {
		if v, err := strconv.ParseFloat(os.Args[1], 64); err == nil && v > 0 && v < 600 {
			s = v
		}
	}
	fmt.Println(outer(time.Duration(s*float64(time.Second))) & 1)
}
