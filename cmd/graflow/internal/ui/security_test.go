package ui

import (
	"errors"
	"testing"
)

func TestCheckAddr(t *testing.T) {
	t.Parallel()
	tests := []struct {
		addr        string
		allowRemote bool
		wantErr     error // nil: accepted
	}{
		{"127.0.0.1:8080", false, nil},
		{"127.1.2.3:0", false, nil},
		{"localhost:8080", false, nil},
		{"[::1]:8080", false, nil},
		{"0.0.0.0:8080", false, ErrNotLoopback},
		{":8080", false, ErrNotLoopback},
		{"[::]:8080", false, ErrNotLoopback},
		{"192.168.1.5:8080", false, ErrNotLoopback},
		{"example.com:8080", false, ErrNotLoopback},
		{"0.0.0.0:8080", true, nil},
		{":8080", true, nil},
	}
	for _, tt := range tests {
		err := CheckAddr(tt.addr, tt.allowRemote)
		if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
			t.Errorf("CheckAddr(%q, allowRemote %v) = %v, want %v", tt.addr, tt.allowRemote, err, tt.wantErr)
		}
	}
	if err := CheckAddr("8080", false); err == nil || errors.Is(err, ErrNotLoopback) {
		t.Errorf("CheckAddr without a port separator = %v, want a format error", err)
	}
}
