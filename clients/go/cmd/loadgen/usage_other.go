//go:build !unix

package main

// The bench runs on Unix only; elsewhere the figures are 0, so that the
// module still builds.
func cpuSeconds() float64 { return 0 }

func peakRSSMiB() float64 { return 0 }
