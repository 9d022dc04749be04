package events

import (
	"encoding/json"
	"fmt"
)

// PostJSON posts v encoded as JSON: Post(source, name, json.Marshal(v)).
func (b *Bus) PostJSON(source, name string, v any) (Result, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return 0, fmt.Errorf("events: post %s/%s: %w", source, name, err)
	}
	return b.Post(source, name, data)
}

// JSON decodes the event's data, as posted by PostJSON, into v.
func (e *Event) JSON(v any) error {
	if err := json.Unmarshal(e.Data, v); err != nil {
		return fmt.Errorf("events: %s/%s seq %d: decode JSON: %w", e.Source, e.Name, e.Seq, err)
	}
	return nil
}
