//go:build !race

package events

const raceDetector = false
