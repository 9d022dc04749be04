package clock

import "bytes"

// cpuFlags returns the flags the kernel lists for the first CPU.
func cpuFlags(info []byte) map[string]bool {
	flags := map[string]bool{}
	for line := range bytes.SplitSeq(info, []byte("\n")) {
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok || string(bytes.TrimSpace(name)) != "flags" {
			continue
		}
		for _, f := range bytes.Fields(value) {
			flags[string(f)] = true
		}
		break
	}
	return flags
}
