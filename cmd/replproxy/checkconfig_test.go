package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/replproxy/replproxy/proxy"
)

// Issue 22, point 5: check-config prints the settings in force, defaults
// filled in and flags, files and the environment applied, with every
// password hidden; what it prints reads back to the same configuration.
func TestCheckConfigShowsEffectiveSettings(t *testing.T) {
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "master.pw")
	os.WriteFile(secretFile, []byte("from-a-file-7731\n"), 0o600)
	path := filepath.Join(dir, "c.yaml")
	os.WriteFile(path, []byte("master:\n  addr: 10.0.0.1:6379\n  password_file: "+secretFile+
		"\nusers:\n  - {name: ops, password: inline-secret-5521, role: admin}\nbacklog:\n  max_bytes: 4gb\n"), 0o644)
	t.Setenv("REPLPROXY_REQUIREPASS", "from-the-env-9154")
	out, err := runCLI(t, "check-config", "--config", path, "--listen", "0.0.0.0:7000")
	if err != nil {
		t.Fatalf("check-config: %v\n%s", err, out)
	}
	for _, secret := range []string{"from-a-file-7731", "inline-secret-5521", "from-the-env-9154"} {
		if strings.Contains(out, secret) {
			t.Errorf("check-config shows the password %q:\n%s", secret, out)
		}
	}
	for _, want := range []string{
		"listen: 0.0.0.0:7000", // a flag
		"max_bytes: 4GiB",      // a size, as the file meant it
		"segment_bytes: 64MiB", // a default
		"repl_timeout: 1m0s",   // a default duration
		`requirepass: "" # set; hidden`,
		`password: "" # set; hidden`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("check-config lacks %q:\n%s", want, out)
		}
	}
	if strings.Count(out, "# set; hidden") != 3 {
		t.Errorf("want 3 hidden passwords (requirepass, master, users[0]):\n%s", out)
	}

	// The YAML part reads back to the same settings, passwords aside.
	yamlPart := out[strings.Index(out, "\nlisten:")+1:]
	back := filepath.Join(dir, "back.yaml")
	os.WriteFile(back, []byte(yamlPart), 0o644)
	got, err := proxy.LoadConfig(back)
	if err != nil {
		t.Fatalf("the printed configuration does not read back: %v\n%s", err, yamlPart)
	}
	t.Setenv("REPLPROXY_REQUIREPASS", "")
	want, err := proxy.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	want.Listen = "0.0.0.0:7000"
	want.Master.PasswordFile = ""
	want.Users[0].Password = ""
	// Compared as printed: an empty list reads back as [] where the
	// defaults hold nil.
	gotYAML, _ := got.EffectiveYAML()
	wantYAML, _ := want.EffectiveYAML()
	if string(gotYAML) != string(wantYAML) {
		t.Errorf("read back:\n%s\nwant\n%s", gotYAML, wantYAML)
	}
}
