package proxy

import (
	"slices"
	"testing"

	"github.com/rs/zerolog"
)

// replicas.compression offers every codec unless told otherwise, and an
// empty list offers none; master.compression auto asks for s2 first.
func TestCompressionConfig(t *testing.T) {
	cfg, err := LoadConfig(writeConfig(t, "master:\n  addr: x:1\n  compression: auto\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Replicas.Compression; !slices.Equal(got, []string{"s2", "zstd"}) {
		t.Fatalf("default replicas.compression %v", got)
	}
	if got := linkConfig(cfg, 1).Codecs; !slices.Equal(got, []string{"s2", "zstd"}) {
		t.Fatalf("master.compression auto asks for %v", got)
	}
	cfg, err = LoadConfig(writeConfig(t, "master:\n  addr: x:1\n  compression: zstd\nreplicas:\n  compression: []\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Replicas.Compression; got == nil || len(got) != 0 {
		t.Fatalf("replicas.compression [] gave %#v", got)
	}
	if got := fanoutConfig(Resolved{Config: cfg}, nil, 0, "", zerolog.Nop()).Codecs; got == nil || len(got) != 0 {
		t.Fatalf("replicas.compression [] offers %#v downstream", got)
	}
	if got := linkConfig(cfg, 1).Codecs; !slices.Equal(got, []string{"zstd"}) {
		t.Fatalf("master.compression zstd asks for %v", got)
	}
}
