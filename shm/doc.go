// Package shm creates, validates and maps the file-backed region that shmring
// processes share, and provides a cross-process wait/wake (a shared futex) on
// a word of that mapping.
//
// It knows bytes and files, not records or events: the header page and the
// sizes of the region's sections are defined here (see the byte map in
// layout.go); what lives inside each section is documented by the package
// that owns it.
package shm
